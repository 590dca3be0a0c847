package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sigsyaml "sigs.k8s.io/yaml"

	"ambit.dev/controller/internal/app"
	"ambit.dev/controller/internal/xds"
	"ambit.dev/controller/lab"
)

// TestProxyStatusRealController runs the controller in folder mode with its real gRPC
// services, connects real xDS clients (mesh/xdsclient) as two ztunnels, one of which rejects its
// config, and reads them back with `ambitctl proxy-status`.
func TestProxyStatusRealController(t *testing.T) {
	fc := startFolderController(t)
	grpcAddr, debugAddr, caDir := fc.grpcAddr, fc.debugAddr, fc.caDir

	// Before any proxy: the listing says so.
	out, err := run(t, Options{}, "proxy-status", "--controller-debug", debugAddr, "--lab-dir", noLab(t))
	if err != nil || out != "No proxies are connected to the controller at "+debugAddr+".\n" {
		t.Fatalf("no proxies: %q %v", out, err)
	}

	bundle := loadBundle(t, filepath.Join(caDir, "root-cert.pem"))
	stopA := startProxy(t, grpcAddr, "token-a", "node-a", bundle, nil)
	stopB := startProxy(t, grpcAddr, "token-b", "node-b", bundle, errors.New("bad workload"))
	defer stopB()

	synced := regexp.MustCompile(`(?m)^ztunnel~node-a +node-a +ztunnel +- +SYNCED +[1-9]\d* +\d+s +-$`)
	nacked := regexp.MustCompile(`(?m)^ztunnel~node-b +node-b +ztunnel +- +NACKED +\d+ +\d+s +.*bad workload.*$`)
	wait.Until(t, 20*time.Second, "proxy-status shows node-a SYNCED and node-b NACKED", func() error {
		out, err = run(t, Options{}, "proxy-status", "--controller-debug", debugAddr, "--lab-dir", noLab(t))
		if err == nil && !(synced.MatchString(out) && nacked.MatchString(out)) {
			err = fmt.Errorf("listing:\n%s", out)
		}
		return err
	})
	if !strings.HasPrefix(out, "NAME ") || strings.Count(out, "\n") != 3 {
		t.Fatalf("table:\n%s", out)
	}

	// -o json and -o yaml carry the controller's records.
	for _, format := range []string{"json", "yaml"} {
		out, err := run(t, Options{}, "proxy-status", "--controller-debug", debugAddr, "--lab-dir", noLab(t), "-o", format)
		if err != nil {
			t.Fatal(err)
		}
		b := []byte(out)
		if format == "yaml" {
			if b, err = sigsyaml.YAMLToJSON(b); err != nil {
				t.Fatalf("yaml: %v\n%s", err, out)
			}
		}
		var ps []xds.ProxyStatus
		if err := json.Unmarshal(b, &ps); err != nil {
			t.Fatalf("%s: %v\n%s", format, err, out)
		}
		if len(ps) != 2 || ps[0].ID != "ztunnel~node-a" || !ps[0].Acked || ps[0].ConnectedAt.IsZero() ||
			ps[1].Acked || !strings.Contains(ps[1].LastNack, "bad workload") {
			t.Fatalf("%s: %+v", format, ps)
		}
	}

	// A proxy that goes away leaves the listing.
	stopA()
	wait.Until(t, 20*time.Second, "node-a gone from proxy-status", func() error {
		out, err = run(t, Options{}, "proxy-status", "--controller-debug", debugAddr, "--lab-dir", noLab(t))
		if err == nil && strings.Contains(out, "node-a") {
			err = fmt.Errorf("listing:\n%s", out)
		}
		return err
	})

	// In lab mode the lab's debug address is used.
	labDir := fakeLab(t, lab.State{Name: "test-lab", DebugAddr: debugAddr})
	out, err = run(t, Options{}, "proxy-status", "--lab-dir", labDir)
	if err != nil || !nacked.MatchString(out) {
		t.Fatalf("lab mode: %q %v", out, err)
	}
}

func TestProxyStatusRendering(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	body := `[
  {"id": "ztunnel~node-a", "node": "node-a", "kind": "ztunnel", "connectedAt": "2026-01-02T03:00:00Z", "acked": true, "version": "7"},
  {"id": "waypoint-abc", "node": "node-b", "kind": "waypoint", "namespace": "shop", "name": "waypoint", "connectedAt": "2026-01-02T01:04:05Z", "acked": false, "version": "6"},
  {"id": "ztunnel~node-c", "node": "node-c", "kind": "ztunnel", "connectedAt": "2026-01-02T03:04:00Z", "acked": false, "version": "5", "lastNack": "Workload: bad\taddress"}
]
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != xds.DebugPath {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	o := Options{Now: func() time.Time { return now }}

	out, err := run(t, o, "proxy-status", "--controller-debug", addr, "--lab-dir", noLab(t))
	if err != nil {
		t.Fatal(err)
	}
	want := `NAME             NODE     KIND       GATEWAY         STATUS   VERSION   AGE    NACK
ztunnel~node-a   node-a   ztunnel    -               SYNCED   7         4m5s   -
waypoint-abc     node-b   waypoint   shop/waypoint   STALE    6         120m   -
ztunnel~node-c   node-c   ztunnel    -               NACKED   5         5s     Workload: bad address
`
	if out != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out, want)
	}
	out, err = run(t, o, "proxy-status", "--controller-debug", addr, "--lab-dir", noLab(t), "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "- acked: true\n  connectedAt: \"2026-01-02T03:00:00Z\"\n  id: ztunnel~node-a\n") ||
		!strings.Contains(out, "  lastNack: \"Workload: bad\\taddress\"\n") {
		t.Fatalf("yaml:\n%s", out)
	}
}

func TestProxyStatusErrors(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "<html>") }))
	defer garbage.Close()
	closed := freeAddr(t) // nothing listens there

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--controller-debug", closed}, "cannot reach the controller at " + closed + ": connection refused — is the controller running, and is --controller-debug its metrics address (port 15014)?"},
		{[]string{"--controller-debug", strings.TrimPrefix(notFound.URL, "http://")}, "answered GET /debug/proxies with 404 Not Found: 404 page not found"},
		{[]string{"--controller-debug", strings.TrimPrefix(garbage.URL, "http://")}, "decode /debug/proxies: invalid character"},
		{[]string{"--lab", "--controller-debug", closed}, "mutually exclusive"},
		{[]string{"extra"}, `unknown command "extra"`},
	} {
		_, err := run(t, Options{}, append([]string{"proxy-status", "--lab-dir", noLab(t)}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	// A lab that is recorded but down names the lab in the hint.
	labDir := fakeLab(t, lab.State{Name: "test-lab", DebugAddr: closed})
	_, err := run(t, Options{}, "proxy-status", "--lab-dir", labDir)
	if err == nil || !strings.Contains(err.Error(), `connection refused — is the lab "test-lab" still up?`) {
		t.Errorf("lab down: %v", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func loadBundle(t *testing.T, path string) *x509bundle.Bundle {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var roots []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, c)
	}
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("cluster.local"), roots)
}

// startProxy connects a ztunnel-like xDS client for node; with reject set it NACKs every
// non-empty workload update. The returned func disconnects it.
func startProxy(t *testing.T, addr, token, node string, bundle *x509bundle.Bundle, reject error) func() {
	t.Helper()
	conn, err := xdsclient.Dial(xdsclient.DialOptions{Address: addr, Token: xdsclient.StaticToken(token), Bundle: bundle})
	if err != nil {
		t.Fatal(err)
	}
	c, err := xdsclient.NewClient(conn, xdsclient.Config{
		Node:     xdsclient.NodeInfo{ID: "ztunnel~" + node, Node: node, Kind: xdsclient.KindZtunnel},
		TypeURLs: configv1.TypeURLs,
		Handler: xdsclient.HandlerFunc(func(typeURL string, upserts map[string]xdsclient.Resource, _ []string) error {
			if reject != nil && typeURL == configv1.WorkloadTypeURL && len(upserts) > 0 {
				return reject
			}
			return nil
		}),
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
		conn.Close()
	}
	t.Cleanup(stop)
	return stop
}

// folderController is a controller in folder mode, with its real gRPC services, on the lab's
// example config: namespace.yaml and workloads.yaml of examples/lab-config, and node tokens
// token-a and token-b for node-a and node-b.
type folderController struct {
	cfgDir, caDir       string
	grpcAddr, debugAddr string
}

func startFolderController(t *testing.T) folderController {
	t.Helper()
	cfgDir, tokDir, caDir := t.TempDir(), t.TempDir(), t.TempDir()
	for _, f := range []string{"namespace.yaml", "workloads.yaml"} {
		b, err := os.ReadFile(filepath.Join("../../../examples/lab-config", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfgDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for node, tok := range map[string]string{"node-a": "token-a", "node-b": "token-b"} {
		if err := os.WriteFile(filepath.Join(tokDir, node), []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fc := folderController{cfgDir: cfgDir, caDir: caDir, grpcAddr: freeAddr(t), debugAddr: freeAddr(t)}
	cfg := app.Config{ConfigDir: cfgDir, CADir: caDir, GRPCAddr: fc.grpcAddr, MetricsAddr: fc.debugAddr, Identity: "test", Debounce: 5 * time.Millisecond}
	cfg.NewPushServer, cfg.NewCAService = app.GRPCServices(tokDir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	wait.Until(t, 20*time.Second, "controller serving gRPC and its debug port", func() error {
		if _, err := os.Stat(filepath.Join(caDir, "root-cert.pem")); err != nil {
			return err
		}
		for _, addr := range []string{fc.grpcAddr, fc.debugAddr} {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
	return fc
}
