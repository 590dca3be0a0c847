package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"

	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/wait"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type fakePush struct {
	deps   Deps
	pushes atomic.Int32
}

func (f *fakePush) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (f *fakePush) Push()                         { f.pushes.Add(1) }

func TestRunFolderMode(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../../examples/lab-config/workloads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "w.yaml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	caDir := t.TempDir()
	push := &fakePush{}
	cfg := Config{
		ConfigDir: dir, CADir: caDir, metricsLn: ln, Identity: "test", CertTTL: 45 * time.Second,
		NewPushServer: func(d Deps) (PushServer, error) { push.deps = d; return push, nil },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	base := "http://" + ln.Addr().String()
	wait.Until(t, 10*time.Second, "ready with a push", func() error {
		if code, _ := get(base + "/readyz"); code != http.StatusOK || push.pushes.Load() == 0 {
			return fmt.Errorf("/readyz %d, %d pushes", code, push.pushes.Load())
		}
		return nil
	})
	if got := len(push.deps.Index.For(model.Proxy{Kind: model.KindZtunnel})[configv1.WorkloadTypeURL]); got != 2 {
		t.Fatalf("%d workloads, want 2", got)
	}
	if push.deps.CA == nil || push.deps.GRPCAddr != ":15012" {
		t.Fatalf("deps %+v", push.deps)
	}
	// --cert-ttl is the lifetime of a certificate whose proxy asks for none.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	csr, err := identity.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := push.deps.CA.Sign(csr, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(leaf.NotAfter); left > 45*time.Second || left < 40*time.Second {
		t.Fatalf("certificate expires in %s, want the 45s of CertTTL", left)
	}
	for _, tc := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/metrics", "ambit_controller_config_generation 1"},
		{"/metrics", "ambit_controller_leader 1"},
	} {
		code, body := get(base + tc.path)
		if code != http.StatusOK || !strings.Contains(body, tc.want) {
			t.Fatalf("%s: %d %q, want %q", tc.path, code, body, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(caDir, "root-key.pem")); err != nil {
		t.Fatalf("CA root not persisted: %v", err)
	}
	// trust-bundle.pem, for the proxies' --root-cert, holds the roots the CA sends.
	if b, err := os.ReadFile(filepath.Join(caDir, TrustBundleFile)); err != nil || string(b) != string(push.deps.CA.RootPEM()) {
		t.Fatalf("%s is not the CA's bundle: %v", TrustBundleFile, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestConfigValidation(t *testing.T) {
	badTemplate := filepath.Join(t.TempDir(), "waypoint.yaml")
	if err := os.WriteFile(badTemplate, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"dir and kubeconfig", Config{ConfigDir: "x", Kubeconfig: "y"}, "mutually exclusive"},
		{"leader election in folder mode", Config{ConfigDir: "x", LeaderElect: true}, "leader election"},
		{"bad trust domain", Config{ConfigDir: "x", TrustDomain: "Not A Domain"}, "trust domain"},
		{"missing dir", Config{ConfigDir: "/nonexistent/ambit", MetricsAddr: "-"}, "nonexistent"},
		{"ca secret in folder mode", Config{ConfigDir: "x", CASecret: "ambit-ca"}, "ca secret needs Kubernetes mode"},
		{"ca secret and ca dir", Config{Kubeconfig: "y", CADir: "x", CASecret: "ambit-ca"}, "mutually exclusive"},
		{"bad ca secret", Config{Kubeconfig: "y", CASecret: "ns/Not_A_Name"}, "ca secret"},
		{"waypoint template in folder mode", Config{ConfigDir: "x", WaypointTemplate: badTemplate}, "waypoint template needs Kubernetes mode"},
		{"missing waypoint template", Config{Kubeconfig: "y", WaypointTemplate: "/nonexistent/waypoint.yaml"}, "waypoint template: open /nonexistent"},
		{"bad waypoint template", Config{Kubeconfig: "y", WaypointTemplate: badTemplate}, "waypoint template " + badTemplate + ": document 1 (ConfigMap \"x\")"},
		{"bad waypoint controller", Config{Kubeconfig: "y", WaypointController: "ambit-controller"}, "waypoint controller address"},
		{"cert ttl too short", Config{ConfigDir: "x", CertTTL: time.Second}, "certificate ttl 1s: want between 10s and 168h0m0s"},
		{"cert ttl too long", Config{ConfigDir: "x", CertTTL: 8 * 24 * time.Hour}, "certificate ttl 192h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Run(ctx, tt.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Waypoints dial the controller's Service in the controller's namespace and run the image
// named like the controller's, without a registry.
func TestWaypointDefaults(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "mesh-system")
	c, err := Config{Kubeconfig: "k", Identity: "test"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.WaypointController != "ambit-controller.mesh-system.svc:15012" || c.WaypointImage != "ambit/waypoint:dev" {
		t.Errorf("waypoint controller %q, image %q", c.WaypointController, c.WaypointImage)
	}
}

// Kubernetes mode keeps the root in a Secret of the controller's namespace unless told
// otherwise; folder mode never does.
func TestCASecretDefault(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "mesh-system")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"kubernetes mode", Config{Kubeconfig: "k"}, "mesh-system/ambit-ca"},
		{"in-cluster", Config{}, "mesh-system/ambit-ca"},
		{"explicit", Config{CASecret: "other/root"}, "other/root"},
		{"kubernetes mode with a ca dir", Config{CADir: "/ca"}, ""},
		{"folder mode", Config{ConfigDir: "x"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Identity = "test"
			c, err := tc.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			if c.CASecret != tc.want {
				t.Errorf("CASecret = %q, want %q", c.CASecret, tc.want)
			}
		})
	}
}
