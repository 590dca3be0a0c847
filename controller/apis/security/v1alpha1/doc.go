// Package v1alpha1 holds ambit's own Kubernetes API types, group security.ambit.dev:
// AuthorizationPolicy and PeerAuthentication. The field comments are the user docs and
// become the OpenAPI descriptions of the CRDs in deploy/crds.
//
// +kubebuilder:object:generate=true
// +groupName=security.ambit.dev
package v1alpha1
