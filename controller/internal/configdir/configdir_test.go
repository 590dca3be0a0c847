package configdir

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
)

const (
	key     = model.LabelDataplaneMode
	ambient = model.ModeAmbient
)

// multiDoc has the Namespace in the middle of other documents, with comments everywhere.
const multiDoc = `# Shop: the namespace and its accounts.
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web   # the frontend
  namespace: shop
---
# The shop namespace. Keep this comment.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: payments # who to page
  annotations:
    note: "quoted, stays quoted"
--- # trailing separator comment
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ports:
  - port: 80
    targetPort: 8080
`

func write(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// snapshot is every file under dir (hidden ones included) with its contents.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		out[p] = read(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEnableDisableMultiDocument(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "shop.yaml", multiDoc)
	docs := strings.Split(multiDoc, "---")

	res, err := SetNamespaceLabel(dir, "shop", key, ambient)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.Created || len(res.Files) != 1 || res.Files[0] != p {
		t.Fatalf("result %+v", res)
	}
	got := read(t, p)
	gotDocs := strings.Split(got, "---")
	if len(gotDocs) != 3 || gotDocs[0] != docs[0] || gotDocs[2] != docs[2] {
		t.Fatalf("other documents changed:\n%s", got)
	}
	for _, want := range []string{
		"# The shop namespace. Keep this comment.",
		"team: payments # who to page",
		"ambit.dev/dataplane-mode: ambient",
		`note: "quoted, stays quoted"`,
	} {
		if !strings.Contains(gotDocs[1], want) {
			t.Errorf("namespace document lacks %q:\n%s", want, gotDocs[1])
		}
	}
	if info, err := os.Stat(p); err != nil || info.Mode().Perm() != 0o640 {
		t.Errorf("mode not kept: %v %v", info.Mode(), err)
	}

	// Again: nothing to do, and the file is not rewritten.
	before, _ := os.Stat(p)
	res, err = SetNamespaceLabel(dir, "shop", key, ambient)
	if err != nil || res.Changed {
		t.Fatalf("second enable: %+v %v", res, err)
	}
	after, _ := os.Stat(p)
	if !os.SameFile(before, after) || read(t, p) != got {
		t.Fatal("second enable rewrote the file")
	}

	res, err = RemoveNamespaceLabel(dir, "shop", key)
	if err != nil || !res.Changed {
		t.Fatalf("disable: %+v %v", res, err)
	}
	got = read(t, p)
	if strings.Contains(got, "dataplane-mode") || !strings.Contains(got, "team: payments # who to page") {
		t.Fatalf("after disable:\n%s", got)
	}
	if gotDocs := strings.Split(got, "---"); gotDocs[0] != docs[0] || gotDocs[2] != docs[2] {
		t.Fatalf("other documents changed:\n%s", got)
	}
	res, err = RemoveNamespaceLabel(dir, "shop", key)
	if err != nil || res.Changed {
		t.Fatalf("second disable: %+v %v", res, err)
	}
	if names := hidden(t, dir); len(names) > 0 {
		t.Fatalf("temporary files left behind: %v", names)
	}
}

func hidden(t *testing.T, dir string) []string {
	var out []string
	for p := range snapshot(t, dir) {
		if strings.HasPrefix(filepath.Base(p), ".") {
			out = append(out, p)
		}
	}
	return out
}

func TestLabelsShapes(t *testing.T) {
	tests := []struct {
		name, in    string
		enable      bool
		want, avoid []string
		changed     bool
	}{
		{"no labels key", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n", true,
			[]string{"  labels:\n    ambit.dev/dataplane-mode: ambient\n"}, nil, true},
		{"empty labels key", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n", true,
			[]string{"ambit.dev/dataplane-mode: ambient"}, nil, true},
		{"flow labels", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: y}}\n", true,
			[]string{"ambit.dev/dataplane-mode: ambient", "x: y"}, nil, true},
		{"other value", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    ambit.dev/dataplane-mode: none # opted out\n", true,
			[]string{"ambit.dev/dataplane-mode: ambient # opted out"}, []string{"none"}, true},
		{"disable drops empty labels", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    ambit.dev/dataplane-mode: ambient\n", false,
			[]string{"name: a"}, []string{"labels"}, true},
		{"disable without label", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n", false,
			nil, nil, false},
		{"only the namespace named", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n", true,
			[]string{"name: b\n---\n"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := write(t, dir, "ns.yml", tt.in)
			var res Result
			var err error
			if tt.enable {
				res, err = SetNamespaceLabel(dir, "a", key, ambient)
			} else {
				res, err = RemoveNamespaceLabel(dir, "a", key)
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Changed != tt.changed || res.Created {
				t.Fatalf("result %+v", res)
			}
			got := read(t, p)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("lacks %q:\n%s", w, got)
				}
			}
			for _, a := range tt.avoid {
				if strings.Contains(got, a) {
					t.Errorf("still has %q:\n%s", a, got)
				}
			}
			if !tt.changed && got != tt.in {
				t.Errorf("unchanged file rewritten:\n%s", got)
			}
		})
	}
}

func TestMissingNamespaceCreatesFile(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "other.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n")

	res, err := RemoveNamespaceLabel(dir, "fresh", key)
	if err != nil || res.Changed || len(res.Files) != 0 {
		t.Fatalf("disable of an undefined namespace: %+v %v", res, err)
	}
	if len(snapshot(t, dir)) != 1 {
		t.Fatal("disable created a file")
	}

	res, err = SetNamespaceLabel(dir, "fresh", key, ambient)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "namespace-fresh.yaml")
	if !res.Created || !res.Changed || len(res.Files) != 1 || res.Files[0] != want {
		t.Fatalf("result %+v", res)
	}
	// The new file is found again: the second enable is a no-op.
	res, err = SetNamespaceLabel(dir, "fresh", key, ambient)
	if err != nil || res.Changed || res.Created || res.Files[0] != want {
		t.Fatalf("second enable: %+v %v", res, err)
	}
	labels := folderLabels(t, dir)
	if labels["fresh"][key] != ambient {
		t.Fatalf("controller sees labels %v", labels)
	}
}

func TestInvalidYAMLChangesNothing(t *testing.T) {
	tests := []struct{ name, file, data, want string }{
		{"bad yaml elsewhere", "broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n", "broken.yaml: document 0"},
		{"bad separator", "broken.yaml", "apiVersion: v1\nkind: Pod\n--- oops\nkind: Service\n", "invalid document separator"},
		{"bad doc after namespace", "shop.yaml", multiDoc + "---\nkey: value\n  bad indent: x\n", "shop.yaml: document 3"},
		{"labels anchored", "shop.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: &l {x: y}\n  annotations: *l\n", "anchor or alias; edit the file by hand"},
		{"labels not a mapping", "shop.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: [x]\n", "metadata.labels is not a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "shop.yaml", multiDoc)
			write(t, dir, tt.file, tt.data)
			before := snapshot(t, dir)
			for _, enable := range []bool{true, false} {
				var err error
				if enable {
					_, err = SetNamespaceLabel(dir, "shop", key, ambient)
				} else {
					_, err = RemoveNamespaceLabel(dir, "shop", key)
				}
				if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "nothing was changed") {
					t.Fatalf("err %v, want %q", err, tt.want)
				}
			}
			after := snapshot(t, dir)
			if len(after) != len(before) {
				t.Fatalf("files changed: %v", after)
			}
			for p, d := range before {
				if after[p] != d {
					t.Fatalf("%s changed", p)
				}
			}
		})
	}
}

func TestBadNames(t *testing.T) {
	dir := t.TempDir()
	for _, ns := range []string{"", "../etc", "Upper", "a/b"} {
		if _, err := SetNamespaceLabel(dir, ns, key, ambient); err == nil {
			t.Errorf("%q accepted", ns)
		}
	}
	if _, err := SetNamespaceLabel(filepath.Join(dir, "missing"), "a", key, ambient); err == nil || !strings.Contains(err.Error(), "config dir") {
		t.Errorf("missing dir: %v", err)
	}
	if len(snapshot(t, dir)) != 0 {
		t.Fatal("files written")
	}
}

// TestFolderRules checks that the editor looks where the controller looks: subdirectories
// yes, hidden files and directories and other extensions no; a Namespace defined twice is
// changed in both files.
func TestFolderRules(t *testing.T) {
	dir := t.TempDir()
	ns := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n"
	a := write(t, dir, "sub/a.yaml", ns)
	b := write(t, dir, "b.yml", ns)
	ignored := []string{
		write(t, dir, ".hidden.yaml", ns),
		write(t, dir, ".git/a.yaml", ns),
		write(t, dir, "a.json", ns),
		write(t, dir, "notes.txt", "not: [yaml"),
	}
	res, err := SetNamespaceLabel(dir, "a", key, ambient)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(res.Files)
	if !res.Changed || len(res.Files) != 2 || res.Files[0] != b || res.Files[1] != a {
		t.Fatalf("result %+v", res)
	}
	for _, p := range ignored {
		if strings.Contains(read(t, p), "dataplane-mode") {
			t.Errorf("%s edited", p)
		}
	}
}

// TestSymlinkedFile replaces the file a symlink points to and keeps the link.
func TestSymlinkedFile(t *testing.T) {
	dir, store := t.TempDir(), t.TempDir()
	target := write(t, store, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n")
	link := filepath.Join(dir, "ns.yaml")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := SetNamespaceLabel(dir, "a", key, ambient); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v", err)
	}
	if !strings.Contains(read(t, target), "dataplane-mode: ambient") {
		t.Fatal("target not edited")
	}
}

// TestControllerSeesEnrolment runs the controller's own folder source and model over the lab
// example with its namespace file edited: pods are sent to ztunnels as HBONE workloads only
// while their namespace is enrolled.
func TestControllerSeesEnrolment(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../../examples/lab-config/workloads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, "workloads.yaml", string(data))
	write(t, dir, "namespace.yaml", "# demo, not enrolled yet\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n")

	idx := model.NewIndex(model.Options{})
	f, err := source.NewFolder(dir, source.NewStore(idx, slog.New(slog.DiscardHandler), source.StoreOptions{}), slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	workloads := func() int {
		t.Helper()
		if err := f.Scan(); err != nil {
			t.Fatal(err)
		}
		idx.Commit()
		n := 0
		for _, r := range idx.For(model.Proxy{ID: "z", Node: "node-a", Kind: model.KindZtunnel})[configv1.WorkloadTypeURL] {
			if r.Message.(*configv1.Workload).GetTunnelProtocol() == configv1.TunnelProtocol_HBONE {
				n++
			}
		}
		return n
	}
	if n := workloads(); n != 0 {
		t.Fatalf("%d HBONE workloads before enable, want 0", n)
	}
	if _, err := SetNamespaceLabel(dir, "demo", key, ambient); err != nil {
		t.Fatal(err)
	}
	if n := workloads(); n != 2 {
		t.Fatalf("%d HBONE workloads after enable, want 2; errors %v", n, idx.Errors())
	}
	if _, err := RemoveNamespaceLabel(dir, "demo", key); err != nil {
		t.Fatal(err)
	}
	if n := workloads(); n != 0 {
		t.Fatalf("%d HBONE workloads after disable, want 0", n)
	}
}

// folderLabels returns the labels of every Namespace in dir's visible files, read
// independently of this package: apimachinery's YAML reader and a strict decode into
// corev1.Namespace.
func folderLabels(t *testing.T, dir string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for p, data := range snapshot(t, dir) {
		if strings.HasPrefix(filepath.Base(p), ".") {
			continue
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			var ns corev1.Namespace
			if err := sigsyaml.UnmarshalStrict(doc, &ns); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if ns.Kind == "Namespace" {
				out[ns.Name] = ns.Labels
			}
		}
	}
	return out
}

// TestRoundTrip: enabling then disabling gives back the exact file, whatever the styles in
// the Namespace document (long lines, quotes, block scalars, flow collections, comments).
func TestRoundTrip(t *testing.T) {
	in := "# head\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a # the name\n  annotations:\n" +
		"    note: " + strings.Repeat("word ", 60) + "end\n" +
		"    quoted: 'single'\n    double: \"x: y\"\n    multi: |\n      line one\n      line two\n" +
		"  finalizers: [kubernetes]\n# tail\n"
	dir := t.TempDir()
	p := write(t, dir, "a.yaml", in)
	if _, err := SetNamespaceLabel(dir, "a", key, ambient); err != nil {
		t.Fatal(err)
	}
	if labels := folderLabels(t, dir); labels["a"][key] != ambient {
		t.Fatalf("labels %v:\n%s", labels, read(t, p))
	}
	if _, err := RemoveNamespaceLabel(dir, "a", key); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p); got != in {
		t.Fatalf("round trip changed the file:\n got %q\nwant %q", got, in)
	}
}

// TestConcurrentEdits: edits of one file from many goroutines (as from many ambitctl runs)
// all land.
func TestConcurrentEdits(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	const n = 8
	for i := range n {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns%d\n", i)
	}
	write(t, dir, "all.yaml", b.String())
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := SetNamespaceLabel(dir, fmt.Sprintf("ns%d", i), key, ambient)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	labels := folderLabels(t, dir)
	for i := range n {
		if labels[fmt.Sprintf("ns%d", i)][key] != ambient {
			t.Fatalf("ns%d lost its label: %v", i, labels)
		}
	}
}

// FuzzSetLabel: whatever a user's file holds, an edit either fails and leaves it alone, or
// produces a file in which the Namespace has the label and every other document is intact.
func FuzzSetLabel(f *testing.F) {
	f.Add(multiDoc)
	f.Add("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {a: b}}\n")
	f.Add("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n")
	f.Add("--- # x\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n...\n")
	f.Add("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: &l {x: y}\n  annotations: *l\n")
	f.Fuzz(func(t *testing.T, in string) {
		dir := t.TempDir()
		p := write(t, dir, "f.yaml", in)
		res, err := SetNamespaceLabel(dir, "shop", key, ambient)
		got := read(t, p)
		if err != nil || !res.Changed || res.Created {
			if got != in {
				t.Fatalf("failed or unchanged edit (%v, %+v) rewrote the file:\n%q", err, res, got)
			}
			return
		}
		before, _ := split([]byte(in))
		after, err := split([]byte(got))
		if err != nil || len(after) != len(before) {
			t.Fatalf("edited file: %v, %d documents, had %d:\n%q", err, len(after), len(before), got)
		}
		for i := range before {
			doc, err := parse(after[i].body)
			if err != nil {
				t.Fatalf("document %d no longer parses: %v\n%q", i, err, got)
			}
			if doc != nil && isNamespace(doc, "shop") {
				if l := lookup(lookup(doc.Content[0], "metadata"), "labels"); l == nil || lookup(l, key) == nil || lookup(l, key).Value != ambient {
					t.Fatalf("document %d lacks the label:\n%q", i, got)
				}
			} else if string(after[i].sep) != string(before[i].sep) || string(after[i].body) != string(before[i].body) {
				t.Fatalf("document %d changed:\n%q\n%q", i, before[i].body, after[i].body)
			}
		}
	})
}

func TestLabelServiceAccountAndService(t *testing.T) {
	dir := t.TempDir()
	objs := `apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: demo}
---
# the Service keeps its comment
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: demo
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server}
`
	path := filepath.Join(dir, "objs.yaml")
	if err := os.WriteFile(path, []byte(objs), 0o644); err != nil {
		t.Fatal(err)
	}
	sa := Object{Kind: "ServiceAccount", Namespace: "demo", Name: "server"}
	if _, err := SetLabel(dir, sa, "ambit.dev/use-waypoint", "wp"); err != nil {
		t.Fatal(err)
	}
	svc := Object{Kind: "Service", Namespace: "demo", Name: "server"}
	if _, err := SetLabel(dir, svc, "ambit.dev/use-waypoint", "wp"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if got := strings.Count(string(b), "ambit.dev/use-waypoint: wp"); got != 2 {
		t.Fatalf("labels set %d times, want 2 (demo/server SA and Service, not default/server):\n%s", got, b)
	}
	if !strings.Contains(string(b), "# the Service keeps its comment") {
		t.Fatalf("comment lost:\n%s", b)
	}
	// A Service defined nowhere cannot be bound; a ServiceAccount is created.
	if _, err := SetLabel(dir, Object{Kind: "Service", Namespace: "demo", Name: "nope"}, "k", "v"); err == nil {
		t.Fatal("labelled a Service that no file defines")
	}
	res, err := SetLabel(dir, Object{Kind: "ServiceAccount", Namespace: "demo", Name: "new"}, "k", "v")
	if err != nil || !res.Created || filepath.Base(res.Files[0]) != "serviceaccount-demo-new.yaml" {
		t.Fatalf("new ServiceAccount: %+v, %v", res, err)
	}
	if _, err := SetLabel(dir, Object{Kind: "Pod", Namespace: "demo", Name: "x"}, "k", "v"); err == nil {
		t.Fatal("edited a Pod's labels")
	}
	if _, err := RemoveLabel(dir, sa, "ambit.dev/use-waypoint"); err != nil {
		t.Fatal(err)
	}
	if _, err := RemoveLabel(dir, svc, "ambit.dev/use-waypoint"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != objs {
		t.Fatalf("set then remove did not give the file back:\n%s", b)
	}
}
