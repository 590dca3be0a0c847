package cniplugin

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"ambit.dev/proto/nodeapi"
)

// fakeAPI serves a Namespace and a Pod with the given labels.
func fakeAPI(t *testing.T, nsLabels, podLabels map[string]string) string {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		l := nsLabels
		if strings.Contains(r.URL.Path, "/pods/") {
			l = podLabels
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"metadata": map[string]any{"labels": l}})
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	kc, err := NewKubeconfig(srv.URL, ca, "tok").Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeZtunnel serves the node API on a unix socket and records the registrations.
func fakeZtunnel(t *testing.T) (string, *[]nodeapi.Registration) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "z.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var regs []nodeapi.Registration
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var reg nodeapi.Registration
		_ = json.NewDecoder(r.Body).Decode(&reg)
		regs = append(regs, reg)
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return sock, &regs
}

func call(t *testing.T, cmd, kubeconfig, sock string) (string, error) {
	t.Helper()
	conf, _ := json.Marshal(Config{CNIVersion: "1.0.0", Name: "k8s", Type: Type, Kubeconfig: kubeconfig, NodeAPI: sock,
		ExcludeNamespaces: []string{"kube-system"}, PrevResult: json.RawMessage(`{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}]}`)})
	var out bytes.Buffer
	err := Plugin{}.Run(Call{Command: cmd, Netns: "/var/run/netns/cni-1", Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web", Stdin: conf}, &out)
	return out.String(), err
}

func TestAdd(t *testing.T) {
	sock, regs := fakeZtunnel(t)
	// Enrolled by its namespace: registered under its workload UID, the result passed on.
	out, err := call(t, "ADD", fakeAPI(t, map[string]string{"ambit.dev/dataplane-mode": "ambient"}, nil), sock)
	if err != nil || !strings.Contains(out, "10.0.0.5/24") {
		t.Fatalf("ADD: %q, %v", out, err)
	}
	// With the address the previous plugin gave, for ztunnel to capture it at once.
	want := nodeapi.Registration{UID: "Kubernetes//Pod/shop/web", Namespace: "shop", Name: "web", NetNS: "/var/run/netns/cni-1",
		ServiceAccount: "default", IPs: []string{"10.0.0.5"}, Ambient: true}
	if len(*regs) != 1 || !reflect.DeepEqual((*regs)[0], want) {
		t.Fatalf("registrations %+v, want %+v", *regs, want)
	}
	// Opted out by its own label: nothing sent.
	if _, err := call(t, "ADD", fakeAPI(t, map[string]string{"istio.io/dataplane-mode": "ambient"}, map[string]string{"ambit.dev/dataplane-mode": "none"}), sock); err != nil || len(*regs) != 1 {
		t.Fatalf("opted-out pod: %v, %d registrations", err, len(*regs))
	}
	// Enrolled but ztunnel away: the ADD fails, "try again later".
	_, err = call(t, "ADD", fakeAPI(t, nil, map[string]string{"istio.io/dataplane-mode": "ambient"}), filepath.Join(t.TempDir(), "none.sock"))
	var e *Error
	if !errors.As(err, &e) || e.Code != codeTryAgainLater {
		t.Fatalf("ADD without ztunnel: %v, want a CNI error with code 11", err)
	}
	// DEL without ztunnel succeeds.
	if _, err := call(t, "DEL", "/nonexistent", filepath.Join(t.TempDir(), "none.sock")); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := (Plugin{}).Run(Call{Command: "VERSION"}, &out); err != nil || !strings.Contains(out.String(), `"1.0.0"`) {
		t.Fatalf("VERSION: %q %v", out.String(), err)
	}
	code := Main(func(k string) string { return map[string]string{"CNI_COMMAND": "BOGUS"}[k] }, strings.NewReader(`{"cniVersion":"1.0.0"}`), &out, &out)
	if code != 1 || !strings.Contains(out.String(), `"code":4`) {
		t.Fatalf("unknown command: exit %d, %q", code, out.String())
	}
}

// TestPrevIPs: the pod's addresses come from the previous plugin's result; without one
// (a plugin first in its list) there are none, and ztunnel captures the pod when the
// controller pushes it; a malformed address fails the ADD.
func TestPrevIPs(t *testing.T) {
	for _, tc := range []struct {
		prev    string
		want    []string
		wantErr bool
	}{
		{`{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"},{"address":"fd00::5/64"}]}`, []string{"10.0.0.5", "fd00::5"}, false},
		{``, nil, false},
		{`null`, nil, false},
		{`{"cniVersion":"1.0.0"}`, nil, false},
		{`{"ips":[{"address":"10.0.0.5"}]}`, nil, true}, // no prefix length: not a CNI address
		{`{"ips":[{"address":"bogus/24"}]}`, nil, true},
		{`{"ips":`, nil, true},
	} {
		got, err := prevIPs(json.RawMessage(tc.prev))
		if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("prevIPs(%s) = %v, %v; want %v, error %v", tc.prev, got, err, tc.want, tc.wantErr)
		}
	}
}
