package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"ambit.dev/controller/internal/kubetest"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/lab"
)

const shopFile = `# the shop
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop # our namespace
`

func TestNamespaceFolderMode(t *testing.T) {
	dir, noLab := t.TempDir(), noLab(t)
	p := filepath.Join(dir, "shop.yaml")
	if err := os.WriteFile(p, []byte(shopFile), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		args []string
		want string
		has  bool // the label is in the file afterwards
	}{
		{[]string{"namespace", "enable", "shop"}, `namespace "shop" enrolled (ambit.dev/dataplane-mode=ambient) in ` + p + "\n", true},
		{[]string{"namespace", "enable", "shop"}, `namespace "shop" is already enrolled (ambit.dev/dataplane-mode=ambient) in ` + p + "; nothing changed\n", true},
		{[]string{"ns", "disable", "shop"}, `namespace "shop" taken out of the mesh (label ambit.dev/dataplane-mode removed) in ` + p + "\n", false},
		{[]string{"ns", "disable", "shop"}, `namespace "shop" is not enrolled (no ambit.dev/dataplane-mode label) in ` + p + "; nothing changed\n", false},
		{[]string{"ns", "disable", "other"}, `namespace "other" is not enrolled: no Namespace is defined in ` + dir + "; nothing changed\n", false},
	}
	for _, s := range steps {
		out, err := run(t, Options{}, append(s.args, "--config-dir", dir, "--lab-dir", noLab)...)
		if err != nil {
			t.Fatalf("%v: %v", s.args, err)
		}
		if out != s.want {
			t.Fatalf("%v:\n got %q\nwant %q", s.args, out, s.want)
		}
		data, _ := os.ReadFile(p)
		if got := strings.Contains(string(data), "ambit.dev/dataplane-mode: ambient"); got != s.has {
			t.Fatalf("%v: label in file %v, want %v:\n%s", s.args, got, s.has, data)
		}
		if !strings.HasPrefix(string(data), "# the shop\napiVersion: v1\nkind: ServiceAccount\n") || !strings.Contains(string(data), "name: shop # our namespace") {
			t.Fatalf("%v: file lost its comments:\n%s", s.args, data)
		}
	}

	out, err := run(t, Options{}, "namespace", "enable", "fresh", "--config-dir", dir, "--lab-dir", noLab)
	created := filepath.Join(dir, "namespace-fresh.yaml")
	if err != nil || !strings.Contains(out, "no Namespace was defined in "+dir+", wrote "+created) {
		t.Fatalf("enable fresh: %q %v", out, err)
	}
	if _, err := os.Stat(created); err != nil {
		t.Fatal(err)
	}
}

func TestNamespaceFolderErrors(t *testing.T) {
	dir := t.TempDir()
	bad := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: [oops\n"
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"namespace", "enable", "shop", "--config-dir", dir}, "bad.yaml: document 0: "},
		{[]string{"namespace", "disable", "shop", "--config-dir", dir}, "nothing was changed"},
		{[]string{"namespace", "enable", "Shop!", "--config-dir", dir}, `namespace name "Shop!"`},
		{[]string{"namespace", "enable", "--config-dir", dir}, "accepts 1 arg(s), received 0"},
		{[]string{"namespace", "enable", "shop", "--config-dir", dir, "--kubeconfig", "k"}, "mutually exclusive"},
		{[]string{"namespace", "enable", "shop", "--config-dir", filepath.Join(dir, "missing")}, "config dir: stat "},
	} {
		_, err := run(t, Options{}, append(tc.args, "--lab-dir", noLab(t))...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "bad.yaml")); string(data) != bad {
		t.Fatal("bad file changed")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("files written: %v", entries)
	}
}

// TestNamespaceLabMode: with a lab up, its config folder is used by default and with --lab;
// an explicit --kubeconfig or --context goes to Kubernetes instead.
func TestNamespaceLabMode(t *testing.T) {
	cfg := t.TempDir()
	labDir := fakeLab(t, lab.State{Name: "test-lab", ConfigDir: cfg})
	kubeCalls := 0
	o := Options{NewKube: func(string, string) (kubernetes.Interface, string, error) {
		kubeCalls++
		return fake.NewClientset(), "the fake cluster", nil
	}}

	out, err := run(t, o, "namespace", "enable", "demo", "--lab-dir", labDir)
	if err != nil || !strings.Contains(out, `namespace "demo" enrolled`) {
		t.Fatalf("default to lab: %q %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(cfg, "namespace-demo.yaml")); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, o, "namespace", "disable", "demo", "--lab", "--lab-dir", labDir)
	if err != nil || !strings.Contains(out, "taken out of the mesh") {
		t.Fatalf("--lab: %q %v", out, err)
	}
	if kubeCalls != 0 {
		t.Fatal("lab mode asked Kubernetes")
	}
	_, err = run(t, o, "namespace", "enable", "demo", "--context", "prod", "--lab-dir", labDir)
	if kubeCalls != 1 || err == nil || !strings.Contains(err.Error(), `namespace "demo" does not exist in the fake cluster`) {
		t.Fatalf("--context went to the lab: calls %d, %v", kubeCalls, err)
	}

	_, err = run(t, o, "namespace", "enable", "demo", "--lab", "--lab-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no lab is up") {
		t.Fatalf("--lab without a lab: %v", err)
	}
}

// TestNamespaceKubeFake checks the Kubernetes mode's decisions against client-go's fake
// clientset; TestNamespaceKubeAPIServer checks the same against a real API server.
func TestNamespaceKubeFake(t *testing.T) {
	c := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}},
	)
	testKube(t, c, func(string, string) (kubernetes.Interface, string, error) { return c, "the fake cluster", nil }, "")
}

func TestNamespaceKubeAPIServer(t *testing.T) {
	requireKubetest(t)
	cl := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kc, err := cl.Kubeconfig(cl.Config)
	if err != nil {
		t.Fatal(err)
	}
	testKube(t, cl.Client, nil, kc)

	// A user without RBAC on namespaces gets the API server's refusal, and nothing changes.
	nobody, err := cl.Kubeconfig(cl.ClientAs("default", "nobody"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = run(t, Options{}, "namespace", "enable", "shop", "--kubeconfig", nobody, "--lab-dir", noLab(t))
	if err == nil || !strings.Contains(err.Error(), `get namespace "shop" in `) || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("without RBAC: %v", err)
	}
}

// testKube runs enable and disable through the command against c, either with newKube
// (fake) or with the real loader and kubeconfig.
func testKube(t *testing.T, c kubernetes.Interface, newKube func(string, string) (kubernetes.Interface, string, error), kubeconfig string) {
	t.Helper()
	o := Options{NewKube: newKube}
	args := func(a ...string) []string {
		a = append(a, "--lab-dir", noLab(t))
		if kubeconfig != "" {
			a = append(a, "--kubeconfig", kubeconfig)
		}
		return a
	}
	labels := func() map[string]string {
		t.Helper()
		ns, err := c.CoreV1().Namespaces().Get(context.Background(), "shop", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return ns.Labels
	}
	for _, s := range []struct {
		args    []string
		want    string
		enabled bool
	}{
		{args("namespace", "enable", "shop"), `namespace "shop" enrolled (ambit.dev/dataplane-mode=ambient) in `, true},
		{args("namespace", "enable", "shop"), `namespace "shop" is already enrolled`, true},
		{args("namespace", "disable", "shop"), `namespace "shop" taken out of the mesh`, false},
		{args("namespace", "disable", "shop"), `namespace "shop" is not enrolled`, false},
	} {
		out, err := run(t, o, s.args...)
		if err != nil || !strings.HasPrefix(out, s.want) {
			t.Fatalf("%v: %q %v, want %q", s.args, out, err, s.want)
		}
		l := labels()
		if got := l[model.LabelDataplaneMode] == model.ModeAmbient; got != s.enabled {
			t.Fatalf("%v: labels %v", s.args, l)
		}
		if _, has := l[model.LabelDataplaneMode]; has != s.enabled || l["team"] != "a" {
			t.Fatalf("%v: labels %v", s.args, l)
		}
	}
	_, err := run(t, o, args("namespace", "enable", "nope")...)
	if err == nil || !strings.Contains(err.Error(), `namespace "nope" does not exist in `) || !strings.Contains(err.Error(), "kubectl create namespace nope") {
		t.Fatalf("missing namespace: %v", err)
	}
}

// requireKubetest skips when the real API server harness cannot run here: it needs the
// kube-apiserver built by `make kube-apiserver` and etcd from `make setup`.
func requireKubetest(t *testing.T) {
	t.Helper()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Skipf("kubetest unavailable: %v", err)
	}
	apiserver := os.Getenv("AMBIT_KUBE_APISERVER")
	if apiserver == "" {
		apiserver = filepath.Join(root, ".cache", "bin", "kube-apiserver")
	}
	if _, err := os.Stat(apiserver); err != nil {
		t.Skipf("kubetest unavailable: no kube-apiserver at %s (run `make kube-apiserver`)", apiserver)
	}
	etcd := os.Getenv("AMBIT_ETCD")
	if etcd == "" {
		if etcd, err = exec.LookPath("etcd"); err != nil {
			etcd = "/usr/bin/etcd"
		}
	}
	if _, err := os.Stat(etcd); err != nil {
		t.Skipf("kubetest unavailable: no etcd at %s (run `make setup`)", etcd)
	}
}

func TestNewKubeErrors(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("KUBECONFIG", "")
	_, err := run(t, Options{}, "namespace", "enable", "shop", "--lab-dir", noLab(t))
	if err == nil || !strings.Contains(err.Error(), "no Kubernetes configuration: pass --kubeconfig") {
		t.Fatalf("no kubeconfig: %v", err)
	}
	_, err = run(t, Options{}, "namespace", "enable", "shop", "--kubeconfig", filepath.Join(home, "missing"), "--lab-dir", noLab(t))
	if err == nil || !strings.Contains(err.Error(), "kubeconfig") || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing kubeconfig: %v", err)
	}
}

func TestNamespaceKubeUnreachable(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://" + freeAddr(t) + "\n" +
		"contexts:\n- name: down\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: x\ncurrent-context: down\n"
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := run(t, Options{}, "namespace", "enable", "shop", "--kubeconfig", kc, "--lab-dir", noLab(t))
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Kubernetes API of cluster https://") ||
		!strings.Contains(err.Error(), "(context down): connection refused — is the cluster up") {
		t.Fatalf("%v", err)
	}
}
