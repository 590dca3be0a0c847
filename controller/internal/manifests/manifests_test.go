package manifests

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCopyIsDeploys fails when the embedded copy differs from deploy/ (run `make generate`).
func TestCopyIsDeploys(t *testing.T) {
	deploy := filepath.Join("..", "..", "..", "deploy")
	var embedded []string
	err := fs.WalkDir(Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		embedded = append(embedded, p)
		got, _ := fs.ReadFile(Files(), p)
		want, err := os.ReadFile(filepath.Join(deploy, p))
		if err != nil || string(got) != string(want) {
			t.Errorf("embedded %s differs from deploy/%s (%v): run `make generate`", p, p, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"crds", "rbac", "controller", "ztunnel", "node-agent"} {
		_ = filepath.WalkDir(filepath.Join(deploy, dir), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(p, ".yaml") {
				rel, _ := filepath.Rel(deploy, p)
				if !slices.Contains(embedded, filepath.ToSlash(rel)) {
					t.Errorf("deploy/%s is not embedded: run `make generate`", rel)
				}
			}
			return nil
		})
	}
}

func TestObjectsRender(t *testing.T) {
	objs, err := Objects(Options{Registry: "ambit.dev", Tag: "v1", TrustDomain: "example.org", PullPolicy: "Never"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	last := Base
	for _, o := range objs {
		seen[o.GetKind()+"/"+o.GetName()] = true
		if o.Component < last {
			t.Errorf("%s/%s out of order", o.GetKind(), o.GetName())
		}
		last = o.Component
	}
	for _, want := range []string{"Namespace/ambit-system", "CustomResourceDefinition/authorizationpolicies.security.ambit.dev",
		"Deployment/ambit-controller", "DaemonSet/ztunnel", "DaemonSet/ambit-node-agent", "ClusterRole/ambit-node-agent"} {
		if !seen[want] {
			t.Errorf("no %s among the objects", want)
		}
	}
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" || o.GetName() != "ztunnel" {
			continue
		}
		c := o.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
		if c["image"] != "ambit.dev/ztunnel:v1" || c["imagePullPolicy"] != "Never" || !slices.Contains(c["args"].([]any), any("--trust-domain=example.org")) {
			t.Errorf("ztunnel container rendered as %v", c)
		}
	}
}
