package caserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	cav1 "ambit.dev/proto/ca/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var idA2 = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")

// rotController is the controller's gRPC listener with the CertificateService over a CA dir,
// restarted (as an operator restarts the controller) after each change of the dir.
type rotController struct {
	t      *testing.T
	caDir  string
	tokens string
	addr   string
	ca     *identity.CA
	stop   func()
}

func (c *rotController) start() {
	c.t.Helper()
	ca, err := identity.LoadOrCreateCA(c.caDir, identity.CAOptions{TrustDomain: td})
	if err != nil {
		c.t.Fatal(err)
	}
	srv, err := New(Options{CA: ca, Authenticator: &TokenDir{Dir: c.tokens}, Identities: NodeIdentitiesFunc(func(node string, id spiffeid.ID) bool {
		return node == "node-a" && (id == idA || id == idA2) || node == "node-b" && id == idB
	})})
	if err != nil {
		c.t.Fatal(err)
	}
	addr := c.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.addr, c.ca = ln.Addr().String(), ca
	l, err := NewListener(ListenerOptions{Listener: ln, CA: ca, Services: []func(*grpc.Server){srv.Register}, DrainTimeout: time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	c.stop = func() {
		cancel()
		if err := <-done; err != nil {
			c.t.Errorf("listener: %v", err)
		}
	}
}

func (c *rotController) restart() {
	c.t.Helper()
	c.stop()
	c.start()
}

// rotProxy is what a ztunnel runs for its certificates: a trust bundle started from
// --root-cert, a CA client that updates it from every response, and a Manager.
type rotProxy struct {
	trust *identity.TrustBundle
	mgr   *identity.Manager
	ca    *xdsclient.CAClient
}

func startRotProxy(t *testing.T, addr, token string, rootCert *x509bundle.Bundle) *rotProxy {
	t.Helper()
	trust := identity.NewTrustBundle(rootCert, nil)
	cc, err := xdsclient.Dial(xdsclient.DialOptions{Address: addr, Token: xdsclient.StaticToken(token), Bundle: trust, ServerID: xdsclient.ControllerID(td)})
	if err != nil {
		t.Fatal(err)
	}
	// Hour-long certificates: nothing is renewed at half-life during the test, so every
	// move comes from Refresh (a proxy's reaction to a new controller connection) and from
	// following a new signer.
	ca := xdsclient.NewCAClientWithBundle(cc, trust)
	mgr := identity.NewManager(identity.ManagerOptions{Signer: ca, TTL: time.Hour,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, SignerChangeSpread: 500 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; cc.Close() })
	return &rotProxy{trust: trust, mgr: mgr, ca: ca}
}

func (p *rotProxy) cert(t *testing.T, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.mgr.Certificate(ctx, id)
	if err != nil {
		t.Fatalf("certificate for %s: %v", id, err)
	}
	return c
}

// hasRoots reports whether the proxy trusts exactly roots.
func (p *rotProxy) hasRoots(roots ...*x509.Certificate) error {
	got := p.trust.Roots()
	if len(got) != len(roots) {
		return fmt.Errorf("%d roots trusted, want %d", len(got), len(roots))
	}
	for _, r := range roots {
		if !slices.ContainsFunc(got, r.Equal) {
			return fmt.Errorf("root %s not trusted", r.Subject)
		}
	}
	return nil
}

// echoServer is an HBONE endpoint that echoes every stream, presenting get's certificate
// and verifying clients against bundle, on TCP and UDP (HTTP/3) of one port.
func echoServer(t *testing.T, get func(*tls.ClientHelloInfo) (*tls.Certificate, error), bundle x509bundle.Source) netip.AddrPort {
	t.Helper()
	srv, err := hbone.NewServer(hbone.ServerConfig{GetCertificate: get, Bundle: bundle,
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) {
			st, err := r.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(st, st)
			st.Close()
		})})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	wg.Go(func() { _ = srv.ServeH3(pc) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return addr
}

// roundTrip opens a stream from src to the server at addr, which must prove dst, and checks
// the echo of a message.
func roundTrip(ctx context.Context, c *hbone.Client, src, dst spiffeid.ID, addr netip.AddrPort, proto hbone.Protocol) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.Dial(ctx, hbone.Target{Source: src, Address: addr, Identities: []spiffeid.ID{dst}, Authority: addr, Protocol: proto})
	if err != nil {
		return err
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("ping " + src.String())
	if _, err := st.Write(msg); err != nil {
		return err
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// traffic is constant load from node-a to node-b: over HTTP/2 and HTTP/3, on pooled
// connections and on a new connection (a full mTLS handshake) for every request, from both
// of node-a's identities.
type traffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       func()
}

func startTraffic(t *testing.T, a *rotProxy, bundleA x509bundle.Source, server netip.AddrPort) *traffic {
	t.Helper()
	tr := &traffic{}
	newClient := func() *hbone.Client {
		c, err := hbone.NewClient(hbone.ClientConfig{Certificate: a.mgr.Certificate, Bundle: bundleA})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, proto := range []hbone.Protocol{hbone.ProtocolH2, hbone.ProtocolH3} {
		for _, fresh := range []bool{false, true} {
			wg.Go(func() {
				pooled := newClient()
				defer pooled.Close()
				for i := 0; ctx.Err() == nil; i++ {
					src := []spiffeid.ID{idA, idA2}[i%2]
					c := pooled
					if fresh {
						c = newClient()
					}
					err := roundTrip(ctx, c, src, idB, server, proto)
					if fresh {
						c.Close()
					}
					switch {
					case err == nil:
						tr.ok.Add(1)
					case ctx.Err() != nil:
					default:
						tr.failed.Add(1)
						tr.mu.Lock()
						tr.errs = append(tr.errs, fmt.Sprintf("%s fresh=%t %s: %v", proto, fresh, src, err))
						tr.mu.Unlock()
					}
					select {
					case <-ctx.Done():
					case <-time.After(10 * time.Millisecond):
					}
				}
			})
		}
	}
	tr.stop = func() { cancel(); wg.Wait() }
	return tr
}

// TestRootRotationUnderTraffic rotates the mesh root from ambit's own root to a user's
// intermediate CA (under the user's root) in the three steps of docs/operations.md, with a
// controller restart after each, while node-a sends constant traffic to node-b over HBONE.
// No request may fail; at the end both proxies trust the new root only, every certificate
// chains to it, and a peer still presenting a certificate of the old root is refused in both
// directions.
func TestRootRotationUnderTraffic(t *testing.T) {
	dir := t.TempDir()
	ctl := &rotController{t: t, caDir: filepath.Join(dir, "ca"), tokens: filepath.Join(dir, "tokens")}
	if err := EnsureNodeTokens(ctl.tokens, "node-a", "node-b", "node-c"); err != nil {
		t.Fatal(err)
	}
	ctl.start()
	defer func() { ctl.stop() }()
	oldRoot := ctl.ca.SignerRoot()
	oldRootPEM, _ := os.ReadFile(filepath.Join(ctl.caDir, "root-cert.pem"))
	oldKeyPEM, _ := os.ReadFile(filepath.Join(ctl.caDir, "root-key.pem"))
	rootCert := ctl.ca.Bundle() // what --root-cert holds: the old root only

	tok := func(node string) string {
		b, err := os.ReadFile(filepath.Join(ctl.tokens, node))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	a := startRotProxy(t, ctl.addr, tok("node-a"), rootCert)
	b := startRotProxy(t, ctl.addr, tok("node-b"), rootCert)
	// node-c has no workloads, hence no certificate to renew: it follows the rotation by
	// fetching the bundle alone when its connection is new (ztunnel's RunBundleRefresh), and
	// must still reach the controller, whose certificate moves to the new root, at the end.
	idle := startRotProxy(t, ctl.addr, tok("node-c"), rootCert)
	idleFollows := func(roots ...*x509.Certificate) error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if err := idle.ca.FetchBundle(ctx); err != nil {
			return err
		}
		return idle.hasRoots(roots...)
	}
	server := echoServer(t, func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return b.mgr.Certificate(h.Context(), idB) }, b.trust)
	for _, id := range []spiffeid.ID{idA, idA2} {
		a.cert(t, id)
	}
	b.cert(t, idB)

	tr := startTraffic(t, a, a.trust, server)
	trafficStopped := false
	defer func() {
		if !trafficStopped {
			tr.stop()
		}
	}()
	served := func(n int64) func() error {
		from := tr.ok.Load()
		return func() error {
			if got := tr.ok.Load() - from; got < n {
				return fmt.Errorf("%d requests so far", got)
			}
			return nil
		}
	}
	wait.Until(t, 20*time.Second, "traffic before the rotation", served(50))

	newPKI := identitytest.NewUserPKI(t, time.Now().Add(365*24*time.Hour))
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(ctl.caDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	chainsTo := func(p *rotProxy, ids ...spiffeid.ID) error {
		for _, id := range ids {
			c := p.cert(t, id)
			if _, err := identity.VerifyPeer(c.Certificate, x509bundle.FromX509Authorities(td, []*x509.Certificate{newPKI.Root})); err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
		}
		return nil
	}
	steps := []struct {
		name   string
		change func()
		done   func() error
	}{
		{"1: the new root is trusted too", func() { write("extra-roots.pem", newPKI.RootPEM) }, func() error {
			return errors.Join(a.hasRoots(oldRoot, newPKI.Root), b.hasRoots(oldRoot, newPKI.Root), idleFollows(oldRoot, newPKI.Root))
		}},
		{"2: the new CA signs", func() {
			write("ca-cert.pem", newPKI.InterPEM)
			write("ca-key.pem", newPKI.InterKeyPEM)
			write("cert-chain.pem", append(newPKI.InterPEM, newPKI.RootPEM...))
		}, func() error {
			return errors.Join(chainsTo(a, idA, idA2), chainsTo(b, idB), idleFollows(oldRoot, newPKI.Root))
		}},
		{"3: the old root is removed", func() {
			for _, f := range []string{"root-cert.pem", "root-key.pem", "extra-roots.pem"} {
				if err := os.Remove(filepath.Join(ctl.caDir, f)); err != nil {
					t.Fatal(err)
				}
			}
		}, func() error {
			return errors.Join(a.hasRoots(newPKI.Root), b.hasRoots(newPKI.Root), idleFollows(newPKI.Root))
		}},
	}
	for _, s := range steps {
		start, before := time.Now(), tr.ok.Load()
		s.change()
		ctl.restart()
		// What a proxy does when its config stream reconnects to the restarted controller.
		a.mgr.Refresh()
		b.mgr.Refresh()
		wait.Until(t, 20*time.Second, s.name, s.done)
		wait.Until(t, 20*time.Second, "traffic after step "+s.name, served(150))
		t.Logf("step %s: %v, %d requests, %d failed so far", s.name, time.Since(start).Round(time.Millisecond), tr.ok.Load()-before, tr.failed.Load())
	}
	tr.stop()
	trafficStopped = true
	t.Logf("rotation under traffic: %d requests, %d failed", tr.ok.Load(), tr.failed.Load())
	if n := tr.failed.Load(); n != 0 {
		t.Fatalf("%d requests failed during the rotation; first: %v", n, tr.errs[:min(5, len(tr.errs))])
	}
	if !ctl.ca.SignerRoot().Equal(newPKI.Root) || len(ctl.ca.Bundle().X509Authorities()) != 1 {
		t.Fatal("the controller does not trust the new root only")
	}

	// After the rotation: connections verify against the new root only. A new connection
	// between the proxies works, a client or server still holding a certificate of the old
	// root is refused, over HTTP/2 and HTTP/3.
	oldCA, err := identity.LoadCA(oldRootPEM, oldKeyPEM, identity.CAOptions{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	oldCertA, oldCertB := identitytest.Issue(t, oldCA, idA, time.Hour), identitytest.Issue(t, oldCA, idB, time.Hour)
	oldServer := echoServer(t, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return oldCertB, nil }, rootCert)
	for _, proto := range []hbone.Protocol{hbone.ProtocolH2, hbone.ProtocolH3} {
		c, err := hbone.NewClient(hbone.ClientConfig{Certificate: a.mgr.Certificate, Bundle: a.trust})
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(t.Context(), c, idA, idB, server, proto); err != nil {
			t.Errorf("%s: a new connection after the rotation: %v", proto, err)
		}
		if err := roundTrip(t.Context(), c, idA, idB, oldServer, proto); !isIdentityError(err) {
			t.Errorf("%s: a server with a certificate of the removed root: %v, want an identity error", proto, err)
		}
		c.Close()
		oldClient, err := hbone.NewClient(hbone.ClientConfig{Bundle: rootCert,
			Certificate: func(context.Context, spiffeid.ID) (*tls.Certificate, error) { return oldCertA, nil }})
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(t.Context(), oldClient, idA, idB, server, proto); err == nil {
			t.Errorf("%s: a client with a certificate of the removed root was served", proto)
		}
		oldClient.Close()
	}
}

func isIdentityError(err error) bool {
	var he *hbone.Error
	return errors.As(err, &he) && he.Kind == hbone.KindIdentity
}

// GetTrustBundle answers an authenticated node with the bundle, and no one else.
func TestGetTrustBundle(t *testing.T) {
	e := newCAEnv(t)
	for _, tc := range []struct {
		name  string
		token string
		code  codes.Code
	}{
		{"node token", e.token(t, "node-a"), codes.OK},
		{"unknown token", "forged", codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.client(t, tc.token, spiffeid.ID{}).GetTrustBundle(t.Context(), &cav1.GetTrustBundleRequest{})
			if status.Code(err) != tc.code {
				t.Fatalf("GetTrustBundle = %v, want %s", err, tc.code)
			}
			if tc.code == codes.OK && resp.GetRootBundle() != string(e.ca.RootPEM()) {
				t.Fatal("the bundle is not the CA's")
			}
		})
	}
}
