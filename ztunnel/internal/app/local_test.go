package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	"ambit.dev/proto/nodeapi"
	"ambit.dev/ztunnel/internal/capture"
	"ambit.dev/ztunnel/internal/netnstest"
)

const localMesh = `version: v1
peerAuthentication: STRICT   # plaintext refused: a call that works went over HBONE
workloads:
- {uid: client, name: client, namespace: shop, serviceAccount: client, addresses: [10.250.0.1]}
- {uid: server, name: server, namespace: shop, serviceAccount: server, addresses: [10.250.0.2]%s}
policies:
- name: deny-client
  namespace: shop
  action: DENY
  rules: [{from: [{principals: [cluster.local/ns/shop/sa/client]}]}]
`

// TestStandalone runs ztunnel from a local config file with a local root (no controller),
// with two real pods, and carries a call between them over HBONE. A bad edit of the file is
// logged with its field and changes nothing; a good one takes effect.
func TestStandalone(t *testing.T) {
	clientNS, serverNS := netnstest.Pair(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file+".tmp", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Replace(localMesh, "%s", "", 1))
	cfg := Config{
		Node: "n1", TrustDomain: "cluster.local", LocalConfig: file,
		StateDir: filepath.Join(dir, "state"), NodeAPI: filepath.Join(dir, "ztunnel.sock"),
		ReadyAddr: freePort(t), DrainPeriod: time.Second, CaptureCheck: 200 * time.Millisecond,
	}
	h := newSignalHandler(t, "ztunnel", "ztunnel started", "local config rejected; keeping the last good config",
		"capture rules changed behind ztunnel's back; repaired")
	cfg.Logger = slog.New(h)
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer func() {
		cancel(ErrStopNow)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ztunnel: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("ztunnel did not stop")
		}
	}()
	h.wait("ztunnel started", 10*time.Second)
	if _, err := os.Stat(filepath.Join(dir, "state", "ca", "root-cert.pem")); err != nil {
		t.Fatalf("local root not created under the state dir: %v", err)
	}

	ln, err := listenIn(serverNS, "10.250.0.2:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	netnstest.Serve(ln, netnstest.Echo)
	api := nodeapi.NewClient(cfg.NodeAPI)
	bg := context.Background()
	for _, r := range []nodeapi.Registration{{UID: "client", NetNS: clientNS}, {UID: "server", NetNS: serverNS}} {
		if err := api.Add(bg, r); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, uid := range []string{"client", "server"} {
			_ = api.Remove(bg, uid)
		}
	}()
	wait.Until(t, 20*time.Second, "pods captured", func() error { return bothCaptured(api.Pods(bg)) })
	call := func() (string, error) {
		var c net.Conn
		err := capture.InNetns(clientNS, func() error {
			var err error
			c, err = net.DialTimeout("tcp", "10.250.0.2:8080", 5*time.Second)
			return err
		})
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "hi")
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := call(); err != nil || got != "echo: hi" {
		t.Fatalf("call over HBONE in standalone mode = %q, %v", got, err)
	}

	// Someone flushes the client's outbound rules: the periodic check puts them back.
	if out, err := exec.Command("nsenter", "--net="+clientNS, "iptables", "-w", "5", "-t", "nat", "-F", "AMBIT_OUTPUT").CombinedOutput(); err != nil {
		t.Fatalf("flush: %v: %s", err, out)
	}
	h.wait("capture rules changed behind ztunnel's back; repaired", 10*time.Second)
	if ok, err := capture.Installed(bg, clientNS); err != nil || !ok {
		t.Fatalf("rules after the periodic check: installed %v, %v", ok, err)
	}

	// A typo: rejected, naming the field; the pods keep their config.
	write(strings.Replace(localMesh, "%s", ", authorizationPolicy: [shop/deny-client]", 1))
	h.wait("local config rejected; keeping the last good config", 10*time.Second)
	if got, err := call(); err != nil || got != "echo: hi" {
		t.Fatalf("call after a bad edit = %q, %v", got, err)
	}
	// The intended edit: the server denies the client.
	write(strings.Replace(localMesh, "%s", ", authorizationPolicies: [shop/deny-client]", 1))
	wait.Until(t, 20*time.Second, "deny policy applied", func() error {
		if got, _ := call(); got != "" {
			return fmt.Errorf("the call still answered %q", got)
		}
		return nil
	})
}

// A local config file that does not parse stops ztunnel at start, naming the field.
func TestStandaloneBadFileAtStart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(file, []byte("version: v1\nworkloads:\n- {name: a, namespace: shop, addresses: [10.0.0.256]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Node: "n1", TrustDomain: "cluster.local", LocalConfig: file,
		StateDir: filepath.Join(dir, "state"), NodeAPI: filepath.Join(dir, "ztunnel.sock"),
		Logger: slog.New(slog.DiscardHandler),
	}
	err := Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), `workloads[0].addresses[0]: "10.0.0.256" is not an IP address`) {
		t.Fatalf("Run with a bad local config = %v", err)
	}
}

// listenIn opens an application's listener inside a pod's namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := capture.InNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}
