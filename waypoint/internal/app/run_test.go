package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/wait"
)

// lifecycleConfig is a waypoint whose controller never answers: it starts, is not ready,
// and stops when told.
func lifecycleConfig(t *testing.T) Config {
	t.Helper()
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root, token := filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(root, ca.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("node-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	controller := ln.Addr().String()
	ln.Close() // nothing listens there
	return Config{Name: "wp", Namespace: "shop", TrustDomain: "cluster.local", Node: "node-1",
		Controller: controller, TokenFile: token, RootCert: root, HBONEAddr: "127.0.0.1:0",
		AdminAddr: freeAddr(t), ReadyAddr: freeAddr(t), DrainPeriod: time.Second}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRunNotReadyThenStops: without config the waypoint answers 503 with the reason, serves
// its admin endpoint, and returns nil once its context ends.
func TestRunNotReadyThenStops(t *testing.T) {
	cfg := lifecycleConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var (
		code int
		body string
	)
	wait.Until(t, 10*time.Second, "the ready endpoint to answer", func() error {
		resp, err := http.Get("http://" + cfg.ReadyAddr + "/healthz/ready")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code, body = resp.StatusCode, string(b)
		return nil
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "config not received from the controller yet") {
		t.Fatalf("ready without config: %d %q", code, body)
	}
	resp, err := http.Get("http://" + cfg.AdminAddr + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"identity": "spiffe://cluster.local/ns/shop/sa/wp"`) {
		t.Fatalf("config_dump: %d %s", resp.StatusCode, b)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(cfg.DrainPeriod + 5*time.Second):
		t.Fatal("waypoint did not stop")
	}
	if _, err := net.Dial("tcp", cfg.ReadyAddr); err == nil {
		t.Fatal("ready listener open after Run returned")
	}
}

// TestRunAddressInUse: an endpoint's address in use fails the start, naming the endpoint.
func TestRunAddressInUse(t *testing.T) {
	cfg := lifecycleConfig(t)
	busy, err := net.Listen("tcp", cfg.ReadyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "ready listener") {
			t.Fatalf("Run with the ready address in use: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run with the ready address in use did not fail")
	}
}
