package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"

	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/wait"
)

func TestFolderLabConfig(t *testing.T) {
	s, logs := newTestStore(t)
	f, err := NewFolder("../../../examples/lab-config", s, slogFrom(logs), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Scan(); err != nil {
		t.Fatal(err)
	}
	s.Index().Commit()
	if errs := s.Index().Errors(); len(errs) != 0 {
		t.Fatalf("errors: %v\n%s", errs, logs)
	}
	res := s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-b"})
	srv, ok := res[configv1.WorkloadTypeURL]["Kubernetes//Pod/demo/server"]
	if !ok {
		t.Fatalf("no server workload; have %v\n%s", keys(res[configv1.WorkloadTypeURL]), logs)
	}
	w := srv.Message.(*configv1.Workload)
	if w.TunnelProtocol != configv1.TunnelProtocol_HBONE || w.ServiceAccount != "server" || w.PeerAuthentication != configv1.PeerAuthenticationMode_STRICT ||
		!slices.Equal(w.AuthorizationPolicies, []string{"demo/server-allow-client"}) ||
		w.Services["demo/server.demo.svc.cluster.local"].GetPorts()[0].GetTargetPort() != 8080 {
		t.Fatalf("server workload %v", w)
	}
	if len(res[configv1.WorkloadTypeURL]) != 2 || len(res[configv1.ServiceTypeURL]) != 1 {
		t.Fatalf("workloads %v services %v", keys(res[configv1.WorkloadTypeURL]), keys(res[configv1.ServiceTypeURL]))
	}
	if got := keys(res[configv1.AuthorizationTypeURL]); !slices.Equal(got, []string{"demo/server-allow-client"}) {
		t.Fatalf("authorizations on node-b %v", got)
	}
	if got := keys(s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-a"})[configv1.AuthorizationTypeURL]); len(got) != 0 {
		t.Fatalf("authorizations on node-a %v, want none", got)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

const goodPod = `apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.1.0.1}]}
`

const goodPolicy = `apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
spec:
  rules: [{to: [{operation: {ports: ["80"]}}]}]
`

func TestFolderBadFilesKeepLastGood(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		bad   string
		wants []string // substrings of the one error log
	}{
		{"unknown field", "pod.yaml", goodPod + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec: {selectr: {app: x}}\n",
			[]string{"pod.yaml", "document 1", "Service", `unknown field \"spec.selectr\"`}},
		{"malformed yaml", "pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web\n", []string{"pod.yaml", "document 0"}},
		{"unsupported kind", "pod.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", []string{"pod.yaml", "ConfigMap c is not supported"}},
		{"unknown kind", "pod.yaml", "apiVersion: v1\nkind: Pood\nmetadata: {name: c}\n", []string{"pod.yaml", "Pood"}},
		{"kind missing after empty documents", "pod.yaml", "---\n# nothing\n---\napiVersion: v1\nmetadata: {name: c}\n", []string{"pod.yaml", "document 1", "Kind"}},
		{"invalid field value", "policy.yaml", `apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
spec:
  rules: [{to: [{operation: {ports: ["http"]}}]}]
`, []string{"AuthorizationPolicy demo/p", "spec.rules[0].to[0].operation.ports[0]"}},
		{"a field Istio does not have", "istio.yaml", `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web, subsett: v1}}]}]
`, []string{"istio.yaml", "VirtualService", `unknown field \"spec.http[0].route[0].destination.subsett\"`}},
		{"istio weights", "istio.yaml", `apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}, weight: 70}, {destination: {host: web}, weight: 20}]}]
`, []string{"VirtualService.networking.istio.io demo/web", "spec.http[0].route", "add up to 90, not 100"}},
		{"bad pod ip", "pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: demo}\nstatus: {podIPs: [{ip: 10.1.0.300}]}\n",
			[]string{"Pod demo/web", "status.podIPs[0].ip"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "pod.yaml", goodPod)
			write(t, dir, "policy.yaml", goodPolicy)
			s, logs := newTestStore(t)
			f, err := NewFolder(dir, s, slogFrom(logs), 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Scan(); err != nil {
				t.Fatal(err)
			}
			s.Index().Commit()
			before := s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-a"})
			if len(before[configv1.WorkloadTypeURL]) != 1 || len(before[configv1.AuthorizationTypeURL]) != 1 {
				t.Fatalf("initial config wrong: %v\n%s", before, logs)
			}
			logs.reset()

			write(t, dir, tt.file, tt.bad)
			if err := f.Scan(); err != nil {
				t.Fatal(err)
			}
			s.Index().Commit()
			out := logs.String()
			if !contains(out, tt.wants...) {
				t.Fatalf("log %q does not contain %q", out, tt.wants)
			}
			if n := countLines(out, "level=ERROR"); n != 1 {
				t.Fatalf("%d error logs, want 1:\n%s", n, out)
			}
			after := s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-a"})
			for _, typ := range []string{configv1.WorkloadTypeURL, configv1.AuthorizationTypeURL} {
				if !slices.Equal(keys(after[typ]), keys(before[typ])) {
					t.Fatalf("%s: %v after bad file, want last good %v", typ, keys(after[typ]), keys(before[typ]))
				}
				for k, r := range before[typ] {
					if after[typ][k].Version != r.Version {
						t.Fatalf("%s %s changed after bad file", typ, k)
					}
				}
			}
		})
	}
}

func TestFolderFollowsChanges(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "pod.yaml", goodPod)
	s, logs := newTestStore(t)
	sub := s.Subscribe()
	runStore(t, s)
	f, err := NewFolder(dir, s, slogFrom(logs), 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	workloads := func() []string {
		return keys(s.Index().For(model.Proxy{Kind: model.KindZtunnel})[configv1.WorkloadTypeURL])
	}
	wait.Until(t, 5*time.Second, "initial pod", func() error {
		if got := workloads(); !slices.Equal(got, []string{"Kubernetes//Pod/demo/web"}) {
			return fmt.Errorf("workloads %q", got)
		}
		return nil
	})
	wait.Until(t, 5*time.Second, "synced", synced(s))
	<-sub

	steps := []struct {
		name string
		do   func()
		want []string
	}{
		{"add a file", func() {
			write(t, dir, "more.yml", "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: demo}\nstatus: {podIPs: [{ip: 10.1.0.2}]}\n")
		}, []string{"Kubernetes//Pod/demo/api", "Kubernetes//Pod/demo/web"}},
		{"edit a file", func() {
			write(t, dir, "more.yml", "apiVersion: v1\nkind: Pod\nmetadata: {name: api2, namespace: demo}\nstatus: {podIPs: [{ip: 10.1.0.2}]}\n")
		}, []string{"Kubernetes//Pod/demo/api2", "Kubernetes//Pod/demo/web"}},
		{"remove a file", func() {
			if err := os.Remove(filepath.Join(dir, "pod.yaml")); err != nil {
				t.Fatal(err)
			}
		}, []string{"Kubernetes//Pod/demo/api2"}},
		{"non-yaml files are ignored", func() { write(t, dir, "notes.txt", "kind: nonsense") }, []string{"Kubernetes//Pod/demo/api2"}},
	}
	for _, st := range steps {
		st.do()
		wait.Until(t, 5*time.Second, st.name, func() error {
			if got := workloads(); !slices.Equal(got, st.want) {
				return fmt.Errorf("workloads %q, want %q", got, st.want)
			}
			return nil
		})
	}
}

func TestFolderMissingDir(t *testing.T) {
	s, logs := newTestStore(t)
	f, err := NewFolder(filepath.Join(t.TempDir(), "nope"), s, slogFrom(logs), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(t.Context()); err == nil {
		t.Fatal("Run on a missing directory succeeded")
	}
}

func write(t *testing.T, dir, name, data string) {
	t.Helper()
	p := filepath.Join(dir, name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	// A distinct mtime even on coarse-grained filesystems.
	mt := time.Now().Add(time.Duration(len(data)) * time.Millisecond)
	if st, err := os.Stat(p); err == nil && !mt.After(st.ModTime()) {
		mt = st.ModTime().Add(time.Second)
	}
	if err := os.Chtimes(tmp, mt, mt); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func countLines(s, sub string) int {
	n := 0
	for _, l := range splitLines(s) {
		if contains(l, sub) {
			n++
		}
	}
	return n
}

func TestFolderIstioBesideAmbit(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "pod.yaml", goodPod)
	write(t, dir, "policy.yaml", goodPolicy)
	write(t, dir, "istio.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["81"]}}]}]
`)
	s, logs := newTestStore(t)
	runStore(t, s)
	f, err := NewFolder(dir, s, slogFrom(logs), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Scan(); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, "both policies", func() error {
		got := keys(s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-a"})[configv1.AuthorizationTypeURL])
		if !slices.Equal(got, []string{"demo/istio:p", "demo/p"}) {
			return fmt.Errorf("authorizations %v; logs %s", got, logs)
		}
		return nil
	})
}

// TestExamplePoliciesValid: every policy in examples/policies decodes strictly and converts
// without an error (the docs point users at them).
func TestExamplePoliciesValid(t *testing.T) {
	files, err := filepath.Glob("../../../examples/policies/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("examples: %v %v", files, err)
	}
	dir := t.TempDir()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		write(t, dir, filepath.Base(f), string(b))
	}
	write(t, dir, "services.yaml", `apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec: {selector: {app: server}, ports: [{name: http, port: 80}]}
`)
	s, logs := newTestStore(t)
	runStore(t, s)
	f, err := NewFolder(dir, s, slogFrom(logs), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Scan(); err != nil {
		t.Fatal(err)
	}
	// The model has committed once the Service's RouteConfig (from istio-canary.yaml) exists.
	wait.Until(t, 5*time.Second, "committed", func() error {
		if s.Index().Generation() == 0 {
			return fmt.Errorf("nothing committed yet")
		}
		return nil
	})
	if errs := s.Index().Errors(); len(errs) > 0 {
		t.Fatalf("invalid: %v", errs)
	}
	if out := logs.String(); strings.Contains(out, "level=ERROR") || strings.Contains(out, "level=WARN") {
		t.Fatalf("logs:\n%s", out)
	}
}
