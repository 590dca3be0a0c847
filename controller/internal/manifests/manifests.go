// Package manifests holds the Kubernetes manifests `ambitctl install` applies: a copy of the
// YAML files of deploy/ (namespace, CRDs, RBAC, controller, ztunnel, node agent), made by
// `make generate` and checked by `make generate-check` and TestCopyIsDeploys (a module cannot
// embed files outside its directory). Objects renders them with the install's options.
package manifests

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

//go:embed deploy
var files embed.FS

// Files are the embedded manifests, paths relative to deploy/.
func Files() fs.FS {
	sub, _ := fs.Sub(files, "deploy")
	return sub
}

// Options say how to render the manifests.
type Options struct {
	// Registry and Tag name the images: <Registry>/<part>:<Tag>; defaults "ambit" and "dev",
	// what the manifests say.
	Registry, Tag string
	// PullPolicy of every container; empty keeps the manifests' IfNotPresent.
	PullPolicy string
	// TrustDomain and LogLevel are passed to the controller and ztunnel; empty keeps their
	// defaults (cluster.local, info).
	TrustDomain, LogLevel string
	// WaypointController is the address the controller tells waypoints to dial; empty: the
	// controller's Service address from its environment (no cluster DNS needed).
	WaypointController string
}

// Component says which part of the install an object belongs to, in apply order.
type Component int

// The components, in apply order.
const (
	Base       Component = iota // the namespace and the CRDs
	Controller                  // RBAC and the controller
	Node                        // ztunnel and the node agent
)

// Object is one rendered manifest.
type Object struct {
	*unstructured.Unstructured
	Component Component
	File      string
}

// Objects renders every manifest, in apply order: the namespace, the CRDs, then by component
// the ServiceAccounts, roles and bindings, Services and the workloads.
func Objects(o Options) ([]Object, error) {
	if o.Registry == "" {
		o.Registry = "ambit"
	}
	if o.Tag == "" {
		o.Tag = "dev"
	}
	var out []Object
	err := fs.WalkDir(Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(p) != ".yaml" {
			return err
		}
		b, err := fs.ReadFile(Files(), p)
		if err != nil {
			return err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var m map[string]any
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if len(m) == 0 {
				continue
			}
			u := &unstructured.Unstructured{Object: m}
			obj := Object{Unstructured: u, File: p, Component: component(p)}
			if err := render(obj, o); err != nil {
				return fmt.Errorf("%s: %s %s: %w", p, u.GetKind(), u.GetName(), err)
			}
			out = append(out, obj)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Component != out[j].Component {
			return out[i].Component < out[j].Component
		}
		return kindOrder(out[i].GetKind()) < kindOrder(out[j].GetKind())
	})
	return out, nil
}

func component(p string) Component {
	switch {
	case p == "namespace.yaml" || strings.HasPrefix(p, "crds/"):
		return Base
	case p == "rbac/node.yaml" || strings.HasPrefix(p, "ztunnel/") || strings.HasPrefix(p, "node-agent/"):
		return Node
	}
	return Controller
}

var kinds = []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
	"Role", "RoleBinding", "ConfigMap", "Service", "PodDisruptionBudget", "Deployment", "DaemonSet"}

func kindOrder(k string) int {
	for i, x := range kinds {
		if x == k {
			return i
		}
	}
	return len(kinds)
}

// render sets the images, pull policies and flags of the workloads.
func render(obj Object, o Options) error {
	switch obj.GetKind() {
	case "Deployment", "DaemonSet":
	default:
		return nil
	}
	containers, _, err := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
	if err != nil {
		return err
	}
	for i, c := range containers {
		cm := c.(map[string]any)
		image, _ := cm["image"].(string)
		part := path.Base(strings.SplitN(image, ":", 2)[0])
		cm["image"] = o.Registry + "/" + part + ":" + o.Tag
		if o.PullPolicy != "" {
			cm["imagePullPolicy"] = o.PullPolicy
		}
		args, _ := cm["args"].([]any)
		add := func(flag, v string) {
			if v != "" {
				args = append(args, "--"+flag+"="+v)
			}
		}
		switch part {
		case "controller":
			add("trust-domain", o.TrustDomain)
			add("log-level", o.LogLevel)
			add("waypoint-image", o.Registry+"/waypoint:"+o.Tag)
			wc := o.WaypointController
			if wc == "" {
				wc = "$(AMBIT_CONTROLLER_SERVICE_HOST):$(AMBIT_CONTROLLER_SERVICE_PORT_GRPC)"
			}
			add("waypoint-controller", wc)
		case "ztunnel":
			add("trust-domain", o.TrustDomain)
			add("log-level", o.LogLevel)
		case "node-agent":
			add("log-level", o.LogLevel)
		}
		cm["args"] = args
		containers[i] = cm
	}
	return unstructured.SetNestedSlice(obj.Object, containers, "spec", "template", "spec", "containers")
}
