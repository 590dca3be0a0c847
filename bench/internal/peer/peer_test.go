package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/wait"
)

func sides(dir string) (client, server Side) {
	client = Side{Client: true, CertFile: filepath.Join(dir, "client.pem"), CAFile: filepath.Join(dir, "ca", "root-cert.pem"),
		ServerName: "server.bench", ServerID: "spiffe://cluster.local/ns/bench/sa/server", Dir: dir,
		Tunnels: []Tunnel{{Name: "http", Listen: "127.0.0.1:28080", Upstream: "10.79.2.2:28443", Authority: "10.79.2.2:8080"}}}
	server = Side{CertFile: filepath.Join(dir, "server.pem"), CAFile: filepath.Join(dir, "ca", "root-cert.pem"), Threads: 2, Dir: dir,
		Tunnels: []Tunnel{{Name: "http", Listen: ":28443", Upstream: "127.0.0.1:8080"}}}
	return client, server
}

// TestConfigs checks the lines that make each peer a mutual-TLS tunnel, and that a side
// missing what it needs is refused.
func TestConfigs(t *testing.T) {
	want := map[string][2][]string{ // kind → client lines, server lines
		"haproxy-mtls": {
			{"\tbind 127.0.0.1:28080\n", "\tserver upstream 10.79.2.2:28443 ssl crt /x/client.pem ca-file /x/ca/root-cert.pem verify required ssl-min-ver TLSv1.3\n", "\tmode tcp\n"},
			{"\tbind :28443 ssl crt /x/server.pem ca-file /x/ca/root-cert.pem verify required ssl-min-ver TLSv1.3\n", "\tserver app 127.0.0.1:8080\n", "\tnbthread 2\n"},
		},
		"nginx-mtls": {
			{"\t\tlisten 127.0.0.1:28080;\n", "\t\tproxy_pass 10.79.2.2:28443;\n", "\t\tproxy_ssl_verify on;\n", "\t\tproxy_ssl_name server.bench;\n",
				"\t\tproxy_ssl_trusted_certificate /x/ca/root-cert.pem;\n", "\t\tproxy_ssl_certificate /x/client.pem;\n", "worker_processes auto;\n"},
			{"\t\tlisten *:28443 ssl;\n", "\t\tssl_verify_client on;\n", "\t\tssl_client_certificate /x/ca/root-cert.pem;\n", "\t\tssl_protocols TLSv1.3;\n",
				"\t\tproxy_pass 127.0.0.1:8080;\n", "worker_processes 2;\n", "daemon off;\n"},
		},
		"istio-go-hbone": {
			{"role client\n", "cert /x/client.pem\n", "ca /x/ca/root-cert.pem\n", "server-id spiffe://cluster.local/ns/bench/sa/server\n", "tunnel 127.0.0.1:28080 10.79.2.2:28443 10.79.2.2:8080\n"},
			{"role server\n", "cert /x/server.pem\n", "listen :28443\n"},
		},
		"stunnel-mtls": {
			{"client = yes\n", "accept = 127.0.0.1:28080\n", "connect = 10.79.2.2:28443\n", "checkHost = server.bench\n", "verifyChain = yes\n", "CAfile = /x/ca/root-cert.pem\n"},
			{"client = no\n", "accept = 0.0.0.0:28443\n", "connect = 127.0.0.1:8080\n", "verifyChain = yes\n", "sslVersionMin = TLSv1.3\n", "socket = r:TCP_NODELAY=1\n"},
		},
	}
	for name, kind := range Kinds {
		client, server := sides("/x")
		for i, side := range []Side{client, server} {
			text, err := kind.Render(side)
			if err != nil {
				t.Fatalf("%s %s: %v", name, side.role(), err)
			}
			for _, line := range want[name][i] {
				if !strings.Contains(text, line) {
					t.Errorf("%s %s config lacks %q:\n%s", name, side.role(), line, text)
				}
			}
		}
		if text, _ := kind.Render(client); name == "haproxy-mtls" && strings.Contains(text, "nbthread") {
			t.Errorf("haproxy client config sets nbthread though Threads is 0:\n%s", text)
		}
		for what, bad := range map[string]Side{
			"no tunnels":      {Dir: "/x", CertFile: "a", CAFile: "b"},
			"no certificates": {Dir: "/x", Tunnels: client.Tunnels},
			"no server name":  {Dir: "/x", Client: true, CertFile: "a", CAFile: "b", Tunnels: client.Tunnels},
			"a space":         {Dir: "/x", CertFile: "a", CAFile: "b", Tunnels: []Tunnel{{Name: "h", Listen: ":1; x", Upstream: "y:1"}}},
		} {
			if _, err := kind.Render(bad); err == nil {
				t.Errorf("%s: a side with %s was accepted", name, what)
			}
		}
	}
}

// TestPairs runs each installed peer as its benchmark does, a client side and a server side
// on loopback in front of an echo server: bytes go through; the server side refuses a client
// without a certificate and one whose certificate another CA signed; the client side refuses
// a server whose name is not the one it checks (peers that check names).
func TestPairs(t *testing.T) {
	for name, kind := range Kinds {
		t.Run(name, func(t *testing.T) {
			bin, err := kind.Path(builtPeers(t))
			if err != nil {
				t.Skipf("%v (make setup installs it)", err)
			}
			dir := t.TempDir()
			if _, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{}); err != nil {
				t.Fatal(err)
			}
			ids := map[string]string{}
			for _, s := range []struct{ sa, name string }{{"client", "client.bench"}, {"server", "server.bench"}} {
				id, err := Issue(filepath.Join(dir, "ca"), "bench", s.sa, s.name, filepath.Join(dir, s.sa+".pem"))
				if err != nil {
					t.Fatal(err)
				}
				ids[s.sa] = id
			}
			echo := echoServer(t)
			tlsPort, plainPort, wrongPort := freePort(t), freePort(t), freePort(t)
			client, server := sides(dir)
			server.Tunnels = []Tunnel{{Name: "echo", Listen: "127.0.0.1:" + tlsPort, Upstream: echo}}
			client.ServerID = ids["server"]
			client.Tunnels = []Tunnel{{Name: "echo", Listen: "127.0.0.1:" + plainPort, Upstream: "127.0.0.1:" + tlsPort, Authority: echo}}
			wrong := client
			wrong.ServerName, wrong.ServerID = "other.bench", ids["client"]
			wrong.Tunnels = []Tunnel{{Name: "echo", Listen: "127.0.0.1:" + wrongPort, Upstream: "127.0.0.1:" + tlsPort, Authority: echo}}
			for _, s := range []struct {
				name string
				side Side
			}{{"server", server}, {"client", client}, {"wrong", wrong}} {
				s.side.Dir = filepath.Join(dir, s.name)
				start(t, kind, bin, s.name, s.side)
			}
			wait.Until(t, 10*time.Second, name+" pair carries bytes", func() error { return roundTrip("127.0.0.1:"+plainPort, "ping") })
			for i := range 20 {
				if err := roundTrip("127.0.0.1:"+plainPort, strings.Repeat("x", 1+i*997)); err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
			}
			if err := tlsHello("127.0.0.1:"+tlsPort, dir, nil); err == nil {
				t.Error("the server side took a client without a certificate")
			}
			if err := tlsHello("127.0.0.1:"+tlsPort, dir, foreignCert(t)); err == nil {
				t.Error("the server side took a client certificate of another CA")
			}
			if kind.ChecksName {
				if err := roundTrip("127.0.0.1:"+wrongPort, "ping"); err == nil {
					t.Error("a client side checking another name reached the server")
				}
			}
		})
	}
}

func start(t *testing.T, kind Kind, bin, name string, side Side) {
	t.Helper()
	if err := os.MkdirAll(side.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	text, err := kind.Render(side)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(side.Dir, name+".conf")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(side.Dir, name+".out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, kind.Args(file)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("%s %s output:\n%s\nconfig:\n%s", kind.Scenario, name, b, text)
		}
	})
}

func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func roundTrip(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// tlsHello connects to a server side as a client with cert (nil: none), trusting the lab's
// root, and exchanges a byte: TLS 1.3 servers report a refused client certificate on the
// first read.
func tlsHello(addr, dir string, cert *tls.Certificate) error {
	pool := x509.NewCertPool()
	root, err := os.ReadFile(filepath.Join(dir, "ca", "root-cert.pem"))
	if err != nil {
		return err
	}
	pool.AppendCertsFromPEM(root)
	cfg := &tls.Config{RootCAs: pool, ServerName: "server.bench", MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{Timeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

// foreignCert is a client certificate for the same SPIFFE ID, signed by a CA of its own.
func foreignCert(t *testing.T) *tls.Certificate {
	dir := t.TempDir()
	if _, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "client.pem")
	if _, err := Issue(filepath.Join(dir, "ca"), "bench", "client", "client.bench", file); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(b, b)
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// builtPeers builds the peers that are commands of this repository (istio-hbone-peer, in the
// compat/istio module outside go.work) once per test binary, into a directory it returns.
func builtPeers(t *testing.T) string {
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "ambit-peers")
		if buildErr != nil {
			return
		}
		buildErr = BuildIstioPeer("../../../compat/istio", builtDir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}
