package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
)

// FieldManager is the server-side apply field manager of Apply.
const FieldManager = "kubetest"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// mapper maps kinds to resources from the API server's discovery; it forgets what it knows
// when a kind is unknown, so kinds of CRDs applied after the first lookup are found.
type mapper struct {
	mu sync.Mutex
	m  *restmapper.DeferredDiscoveryRESTMapper
}

func newMapper(client kubernetes.Interface) *mapper {
	return &mapper{m: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))}
}

// Mapping returns the resource of a kind, waiting (until ctx ends) for a kind that discovery
// does not know yet, such as that of a CRD just established.
func (c *Cluster) Mapping(ctx context.Context, gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	for {
		c.mapper.mu.Lock()
		m, err := c.mapper.m.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			c.mapper.m.Reset()
		}
		c.mapper.mu.Unlock()
		if err == nil || !meta.IsNoMatchError(err) {
			return m, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kind %s: %w (waited: %v)", gvk, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Apply server-side applies every object in the given YAML files, or in the *.yaml and *.yml
// files under the given directories (recursively, in lexical order). A relative path is taken
// from the repository root. Objects of a namespaced kind without a namespace go to "default";
// a namespace that does not exist yet is created.
func (c *Cluster) Apply(ctx context.Context, paths ...string) error {
	files, err := manifestFiles(c.Root, paths)
	if err != nil {
		return err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := c.ApplyYAML(ctx, data); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}

// ApplyYAML server-side applies every object of a (multi-document) YAML stream.
func (c *Cluster) ApplyYAML(ctx context.Context, data []byte) error {
	objs, err := DecodeYAML(data)
	if err != nil {
		return err
	}
	for _, obj := range objs {
		if err := c.ApplyObject(ctx, obj); err != nil {
			return err
		}
	}
	return nil
}

// ApplyObject server-side applies one object (forcing ownership of conflicting fields).
func (c *Cluster) ApplyObject(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	m, err := c.Mapping(ctx, gvk)
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	ri := c.Dynamic.Resource(m.Resource)
	var res interface {
		Apply(context.Context, string, *unstructured.Unstructured, metav1.ApplyOptions, ...string) (*unstructured.Unstructured, error)
	} = ri
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = "default"
			obj.SetNamespace(ns)
		}
		if err := c.EnsureNamespace(ctx, ns, nil); err != nil {
			return err
		}
		res = ri.Namespace(ns)
	}
	if _, err := res.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return fmt.Errorf("applying %s %s: %w", gvk.Kind, name(obj), err)
	}
	return nil
}

func name(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() != "" {
		return obj.GetNamespace() + "/" + obj.GetName()
	}
	return obj.GetName()
}

// DecodeYAML splits a multi-document YAML stream into objects, skipping empty documents.
func DecodeYAML(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &obj.Object); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(obj.Object) == 0 {
			continue // only comments
		}
		if obj.GetKind() == "" || obj.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document %d: no apiVersion or kind", i)
		}
		objs = append(objs, obj)
	}
}

func manifestFiles(root string, paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			p = filepath.Join(root, p)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("no YAML files under %s", p)
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	return files, nil
}

// WaitForCRDs waits until every CustomResourceDefinition in the given files or directories
// is Established and its kind is served (discovery knows it).
func (c *Cluster) WaitForCRDs(ctx context.Context, paths ...string) error {
	files, err := manifestFiles(c.Root, paths)
	if err != nil {
		return err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		objs, err := DecodeYAML(data)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		for _, obj := range objs {
			if obj.GetKind() != "CustomResourceDefinition" {
				continue
			}
			if err := c.waitEstablished(ctx, obj.GetName()); err != nil {
				return err
			}
			group, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
			kind, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "kind")
			versions, _, _ := unstructured.NestedSlice(obj.Object, "spec", "versions")
			for _, v := range versions {
				vm, _ := v.(map[string]any)
				if served, _ := vm["served"].(bool); !served {
					continue
				}
				version, _ := vm["name"].(string)
				if _, err := c.Mapping(ctx, schema.GroupVersionKind{Group: group, Version: version, Kind: kind}); err != nil {
					return fmt.Errorf("CRD %s is established but not served: %w", obj.GetName(), err)
				}
			}
		}
	}
	return nil
}

func (c *Cluster) waitEstablished(ctx context.Context, name string) error {
	var last string
	for {
		crd, err := c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			last = "no conditions yet"
			for _, cond := range conds {
				cm, _ := cond.(map[string]any)
				if cm["type"] == "Established" && cm["status"] == "True" {
					return nil
				}
				if cm["type"] == "NamesAccepted" && cm["status"] == "False" {
					return fmt.Errorf("CRD %s: names not accepted: %v", name, cm["message"])
				}
				last = fmt.Sprintf("%v=%v (%v)", cm["type"], cm["status"], cm["message"])
			}
		case apierrors.IsNotFound(err):
			last = "not found"
		default:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %s (%w)", name, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
