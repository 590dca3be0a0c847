// Package istio holds the wire-compatibility tests between ambit's HBONE (ambit.dev/mesh/hbone)
// and Istio's Go implementation (istio.io/istio/pkg/hbone). It is a module of its own, outside
// go.work, so that Istio's dependency graph never enters the workspace; run it with
// `make compat` (GOWORK=off go test -race ./...).
package istio
