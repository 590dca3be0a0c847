package istio

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	ihbone "istio.io/istio/pkg/hbone"
	ilog "istio.io/istio/pkg/log"
)

// Every test talks over real sockets on 127.0.0.1 with SVIDs from our identity CA. Istio's
// side is istio.io/istio/pkg/hbone: its Dialer (x/net/http2 Transport) and its Server
// (net/http).

const ioTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	// Istio's hbone scope logs every CONNECT at info level.
	if s := ilog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(ilog.NoneLevel)
	}
	code := m.Run()
	if labDown != nil {
		labDown()
	}
	os.Exit(code)
}

// ---- identities

type pki struct {
	ca       *identity.CA
	clientID spiffeid.ID
	serverID spiffeid.ID
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := identity.NewCA(identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	return &pki{ca: ca, clientID: workloadID(t, "client"), serverID: workloadID(t, "server")}
}

func workloadID(t *testing.T, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(spiffeid.RequireTrustDomainFromString("cluster.local"), "default", sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// issue returns an SVID for id signed by ca: one URI SAN, no DNS or IP SAN.
func issue(t *testing.T, ca *identity.CA, id spiffeid.ID) *tls.Certificate {
	return identitytest.Issue(t, ca, id, time.Hour)
}

// ---- TCP upstreams

// upstream is a TCP server on 127.0.0.1 that serves each connection with fn and counts
// them. Cleanup closes the listener and every connection, then waits for fn to return.
type upstream struct {
	addr    netip.AddrPort
	accepts atomic.Int32
}

func startUpstream(t *testing.T, fn func(*net.TCPConn)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepts.Add(1)
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c.(*net.TCPConn))
			}()
		}
	}()
	return u
}

// echo copies until EOF, then half-closes.
func echo(c *net.TCPConn) {
	_, _ = io.Copy(c, c)
	_ = c.CloseWrite()
}

// closedPort returns a 127.0.0.1 address nobody listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

// ---- our server

type seenRequest struct {
	peer                         spiffeid.ID
	authority, forwarded, remote netip.AddrPort
	traceparent, baggage         string
}

type ourServer struct {
	addr    netip.AddrPort
	accepts atomic.Int32
	logs    syncBuffer // the server's log

	mu   sync.Mutex
	seen []seenRequest
}

func (s *ourServer) requests() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenRequest(nil), s.seen...)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startOurServer runs our hbone.Server on 127.0.0.1 with the default anti-spoofing check;
// its handler records the request and forwards it with hbone.Forward.
func startOurServer(t *testing.T, p *pki) *ourServer {
	t.Helper()
	cert := issue(t, p.ca, p.serverID)
	s := &ourServer{}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		ConnConfig:     hbone.ConnConfig{Logger: slog.New(slog.NewTextHandler(&s.logs, nil))},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		Bundle:         p.ca.Bundle(),
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) {
			s.mu.Lock()
			s.seen = append(s.seen, seenRequest{peer: r.Peer, authority: r.Authority, forwarded: r.Forwarded,
				remote: r.Remote, traceparent: r.Traceparent, baggage: r.Baggage})
			s.mu.Unlock()
			_ = hbone.Forward(ctx, r, func(ctx context.Context, dst netip.AddrPort) (hbone.HalfCloser, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", dst.String())
				if err != nil {
					return nil, err
				}
				return c.(*net.TCPConn), nil
			})
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(countingListener{ln, &s.accepts})
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return s
}

// ---- Istio's client

// istioDialer is Istio's HBONE dialer towards proxy, presenting cert. Istio's dialer
// verifies server names the standard way; an SVID carries only a URI SAN, so the check is
// replaced by a SPIFFE one: the chain must lead to bundle and the leaf must prove serverID.
func istioDialer(proxy netip.AddrPort, cert *tls.Certificate, bundle x509bundle.Source, serverID spiffeid.ID) ihbone.Dialer {
	return ihbone.NewDialer(ihbone.Config{
		ProxyAddress: proxy.String(),
		TLS: &tls.Config{
			MinVersion:         tls.VersionTLS13,
			Certificates:       []tls.Certificate{*cert},
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				id, err := identity.VerifyPeer(raw, bundle)
				if err != nil {
					return err
				}
				if id != serverID {
					return fmt.Errorf("server is %s, want %s", id, serverID)
				}
				return nil
			},
		},
	})
}

// ---- Istio's server

// startIstioServer runs Istio's HBONE server (net/http, HTTP/2 over TLS) on 127.0.0.1; it
// requires a client SVID that chains to bundle.
func startIstioServer(t *testing.T, cert *tls.Certificate, bundle x509bundle.Source) netip.AddrPort {
	t.Helper()
	s := ihbone.NewServer()
	s.Protocols.SetHTTP2(true)
	s.ErrorLog = stdlog.New(io.Discard, "", 0) // handshakes our client refuses
	s.TLSConfig = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := identity.VerifyPeer(raw, bundle)
			return err
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func ourClient(t *testing.T, p *pki) *hbone.Client {
	t.Helper()
	cert := issue(t, p.ca, p.clientID)
	cl, err := hbone.NewClient(hbone.ClientConfig{
		Certificate: func(_ context.Context, id spiffeid.ID) (*tls.Certificate, error) {
			if id != p.clientID {
				return nil, fmt.Errorf("no certificate for %s", id)
			}
			return cert, nil
		},
		Bundle: p.ca.Bundle(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// ---- helpers

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// roundTrip writes payload from a goroutine while reading the same number of bytes back,
// so that neither side's flow control can stall the other.
func roundTrip(c net.Conn, payload []byte) ([]byte, error) {
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	got := make([]byte, len(payload))
	_, rerr := io.ReadFull(c, got)
	return got, errors.Join(rerr, <-werr)
}

func within(t *testing.T, what string, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(ioTimeout):
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

// ==== 1. Istio's client → our server

func TestIstioClientToOurServer(t *testing.T) {
	p := newPKI(t)
	up := startUpstream(t, echo)
	srv := startOurServer(t, p)
	d := istioDialer(srv.addr, issue(t, p.ca, p.clientID), p.ca.Bundle(), p.serverID)

	// The first stream opens the connection; the rest share it, eight at a time.
	c, err := d.Dial("tcp", up.addr.String())
	if err != nil {
		t.Fatalf("Istio dial through our server: %v", err)
	}
	want := []byte("hello over HBONE from istio.io/istio/pkg/hbone")
	got, err := roundTrip(c, want)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("echo: got %q, %v; want %q", got, err, want)
	}
	c.Close()

	const streams = 8
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.Dial("tcp", up.addr.String())
			if err != nil {
				errs <- fmt.Errorf("stream %d: dial: %w", i, err)
				return
			}
			defer c.Close()
			// Distinct, larger than one DATA frame, and larger than the 64 KiB initial
			// window Go's transport starts with.
			payload := append([]byte(fmt.Sprintf("stream %d|", i)), randomBytes(t, 100<<10+i)...)
			got, err := roundTrip(c, payload)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, payload) {
				errs <- fmt.Errorf("stream %d: echoed bytes differ from the %d sent", i, len(payload))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if n := srv.accepts.Load(); n != 1 {
		t.Errorf("our server accepted %d TCP connections; want 1 (Istio's transport pools streams)", n)
	}
	reqs := srv.requests()
	if len(reqs) != 1+streams {
		t.Fatalf("our handler saw %d requests; want %d", len(reqs), 1+streams)
	}
	for i, r := range reqs {
		if r.peer != p.clientID {
			t.Errorf("request %d: peer %s; want %s", i, r.peer, p.clientID)
		}
		if r.authority != up.addr {
			t.Errorf("request %d: :authority %s; want %s", i, r.authority, up.addr)
		}
		if r.remote != reqs[0].remote {
			t.Errorf("request %d arrived from %s, request 0 from %s: not one pooled connection", i, r.remote, reqs[0].remote)
		}
		// Istio's dialer sends :method and :authority only.
		if r.forwarded.IsValid() || r.traceparent != "" || r.baggage != "" {
			t.Errorf("request %d: unexpected Forwarded %v / traceparent %q / baggage %q", i, r.forwarded, r.traceparent, r.baggage)
		}
	}
	if n := up.accepts.Load(); n != 1+streams {
		t.Errorf("upstream accepted %d connections; want %d", n, 1+streams)
	}
}

func TestIstioClientToOurServerBulk(t *testing.T) {
	p := newPKI(t)
	up := startUpstream(t, echo)
	srv := startOurServer(t, p)
	d := istioDialer(srv.addr, issue(t, p.ca, p.clientID), p.ca.Bundle(), p.serverID)
	c, err := d.Dial("tcp", up.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := randomBytes(t, 1<<20)
	got, err := roundTrip(c, payload)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("1 MiB echoed through Istio client → our server differs from what was sent")
	}
}

// Istio's Dial returns one end of a net.Pipe: there is no CloseWrite, and Close ends both
// directions. Close does send END_STREAM, which our server turns into a FIN upstream after
// exactly the bytes written, but a reply the upstream sends after that FIN cannot be read.
func TestIstioClientHalfClose(t *testing.T) {
	p := newPKI(t)
	received := make(chan string, 1)
	up := startUpstream(t, func(c *net.TCPConn) {
		b, err := io.ReadAll(c) // until the FIN
		received <- fmt.Sprintf("%q err=%v", b, err)
		_, _ = c.Write([]byte("reply after FIN"))
		_ = c.CloseWrite()
	})
	srv := startOurServer(t, p)
	d := istioDialer(srv.addr, issue(t, p.ca, p.clientID), p.ca.Bundle(), p.serverID)
	c, err := d.Dial("tcp", up.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(interface{ CloseWrite() error }); ok {
		t.Fatalf("Istio's conn %T now has CloseWrite: test half-close through it", c)
	}
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := within(t, "the upstream's EOF", received), `"request" err=<nil>`; got != want {
		t.Fatalf("upstream read %s; want %s", got, want)
	}
	buf := make([]byte, 64)
	if n, err := c.Read(buf); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Read after Close: %q, %v; want io.ErrClosedPipe (the reply is lost)", buf[:n], err)
	}
}

// The upstream half-closes first. Our server carries the FIN to Istio's client as
// END_STREAM while the upstream keeps reading; Istio's client then closes its conn
// altogether, so the client→upstream direction ends too.
func TestIstioClientUpstreamHalfClose(t *testing.T) {
	p := newPKI(t)
	received := make(chan string, 1)
	up := startUpstream(t, func(c *net.TCPConn) {
		_, _ = c.Write([]byte("bye"))
		_ = c.CloseWrite()
		b, err := io.ReadAll(c)
		received <- fmt.Sprintf("%q err=%v", b, err)
	})
	srv := startOurServer(t, p)
	d := istioDialer(srv.addr, issue(t, p.ca, p.clientID), p.ca.Bundle(), p.serverID)
	c, err := d.Dial("tcp", up.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\" then EOF", b, err)
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Write after the upstream's FIN: %v; want io.ErrClosedPipe", err)
	}
	if got, want := within(t, "the upstream's EOF", received), `"" err=<nil>`; got != want {
		t.Fatalf("upstream read %s; want %s", got, want)
	}
}

// Our server answers 400 to an :authority that is not the address the connection arrived
// at (anti-spoofing) and 503 when the destination refuses; Istio's client reports both.
func TestIstioClientSeesOurStatusCodes(t *testing.T) {
	p := newPKI(t)
	srv := startOurServer(t, p)
	d := istioDialer(srv.addr, issue(t, p.ca, p.clientID), p.ca.Bundle(), p.serverID)

	if _, err := d.Dial("tcp", "10.1.2.3:8080"); err == nil || !strings.Contains(err.Error(), "400 Bad Request") {
		t.Errorf("spoofed authority: err %v; want 400 Bad Request", err)
	}
	if n := len(srv.requests()); n != 0 {
		t.Errorf("handler ran for %d spoofed requests; want 0", n)
	}
	if _, err := d.Dial("tcp", closedPort(t).String()); err == nil || !strings.Contains(err.Error(), "503 Service Unavailable") {
		t.Errorf("unreachable destination: err %v; want 503 Service Unavailable", err)
	}
}

// ==== 2. our client → Istio's server

func TestOurClientToIstioServer(t *testing.T) {
	p := newPKI(t)
	up := startUpstream(t, echo)
	addr := startIstioServer(t, issue(t, p.ca, p.serverID), p.ca.Bundle())
	cl := ourClient(t, p)
	target := hbone.Target{Source: p.clientID, Address: addr, Identities: []spiffeid.ID{p.serverID}, Authority: up.addr}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()

	for i := range 3 {
		st, err := cl.Dial(ctx, target)
		if err != nil {
			t.Fatalf("stream %d: dial Istio's server: %v", i, err)
		}
		if got := st.PeerIdentity(); got != p.serverID {
			t.Errorf("stream %d: peer %s; want %s", i, got, p.serverID)
		}
		_ = st.SetDeadline(time.Now().Add(ioTimeout))
		want := fmt.Sprintf("ambit → istio stream %d", i)
		if _, err := st.Write([]byte(want)); err != nil {
			t.Fatal(err)
		}
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if _, err := io.ReadFull(st, got); err != nil || string(got) != want {
			t.Fatalf("stream %d: read %q, %v; want %q", i, got, err, want)
		}
		// The echo closes after our END_STREAM; Istio's server ends the response.
		if n, err := st.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("stream %d: after the echo: %d bytes, %v; want exactly io.EOF", i, n, err)
		}
		st.Close()
	}
	if n := cl.Conns(); n != 1 {
		t.Errorf("our client holds %d connections to Istio's server; want 1 pooled", n)
	}
}

func TestOurClientToIstioServerBulk(t *testing.T) {
	p := newPKI(t)
	up := startUpstream(t, echo)
	addr := startIstioServer(t, issue(t, p.ca, p.serverID), p.ca.Bundle())
	cl := ourClient(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	st, err := cl.Dial(ctx, hbone.Target{Source: p.clientID, Address: addr, Identities: []spiffeid.ID{p.serverID}, Authority: up.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(ioTimeout))
	payload := randomBytes(t, 1<<20)
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(payload)
		werr <- errors.Join(err, st.CloseWrite())
	}()
	got, err := io.ReadAll(st) // until io.EOF
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("1 MiB through our client → Istio's server: got %d bytes back, not what was sent", len(got))
	}
}

// The upstream writes and closes without reading. Go's HTTP/2 server then ends the
// response (END_STREAM) and, because our request body is still open, resets the stream
// with NO_ERROR. Our client must see the bytes and a clean io.EOF, and only then learn that
// the peer reads no more.
func TestOurClientGracefulResetFromIstioServer(t *testing.T) {
	p := newPKI(t)
	up := startUpstream(t, func(c *net.TCPConn) { _, _ = c.Write([]byte("bye")) })
	addr := startIstioServer(t, issue(t, p.ca, p.serverID), p.ca.Bundle())
	cl := ourClient(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	st, err := cl.Dial(ctx, hbone.Target{Source: p.clientID, Address: addr, Identities: []spiffeid.ID{p.serverID}, Authority: up.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(ioTimeout))
	var got []byte
	buf := make([]byte, 64)
	for {
		n, err := st.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if err != io.EOF {
				t.Fatalf("read ended with %v after %q; want io.EOF", err, got)
			}
			break
		}
	}
	if string(got) != "bye" {
		t.Fatalf("read %q; want \"bye\"", got)
	}
	// Writes succeed until the RST_STREAM(NO_ERROR) arrives, then fail without having
	// turned the reads into an error. A reset taken as an error would fail them with
	// "stream reset by peer"; the graceful path ends our write side instead (it reports
	// "write after CloseWrite" although we never called CloseWrite, as the graceful path
	// marks the write side ended before recording why).
	deadline := time.Now().Add(ioTimeout)
	for {
		_, err := st.Write([]byte("x"))
		if err != nil {
			if msg := err.Error(); msg != "hbone: write after CloseWrite" && msg != "hbone: peer ended the stream and reads no more" {
				t.Fatalf("write after the peer's reset: %v; want the graceful end of our write side", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Istio's server never reset the stream (RST_STREAM NO_ERROR expected)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, err := st.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after the reset: %d, %v; want io.EOF still", n, err)
	}
}

// The upstream half-closes and keeps reading. Istio's server does not carry that as a
// half-close: it ends the response, stops reading our request body and sends the upstream
// a FIN of its own, so bytes our client sends afterwards never arrive.
func TestIstioServerUpstreamHalfCloseEndsBothDirections(t *testing.T) {
	p := newPKI(t)
	received := make(chan string, 1)
	up := startUpstream(t, func(c *net.TCPConn) {
		_, _ = c.Write([]byte("bye"))
		_ = c.CloseWrite()
		b, err := io.ReadAll(c)
		received <- fmt.Sprintf("%q err=%v", b, err)
	})
	addr := startIstioServer(t, issue(t, p.ca, p.serverID), p.ca.Bundle())
	cl := ourClient(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	st, err := cl.Dial(ctx, hbone.Target{Source: p.clientID, Address: addr, Identities: []spiffeid.ID{p.serverID}, Authority: up.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(st)
	if err != nil || string(b) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\" then io.EOF", b, err)
	}
	_, _ = st.Write([]byte("late")) // may already fail: the peer reset the stream gracefully
	_ = st.CloseWrite()
	if got, want := within(t, "the upstream's EOF", received), `"" err=<nil>`; got != want {
		t.Fatalf("upstream read %s; want %s", got, want)
	}
}

// Istio's server answers 200 before it dials the destination. A refused destination
// therefore looks like an accepted stream that ends at once, not like a 503.
func TestOurClientIstioServerAnswers200BeforeDialing(t *testing.T) {
	p := newPKI(t)
	addr := startIstioServer(t, issue(t, p.ca, p.serverID), p.ca.Bundle())
	cl := ourClient(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	st, err := cl.Dial(ctx, hbone.Target{Source: p.clientID, Address: addr, Identities: []spiffeid.ID{p.serverID}, Authority: closedPort(t)})
	if err != nil {
		t.Fatalf("Dial: %v; Istio's server is known to answer 200 before dialing", err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(ioTimeout))
	if n, err := st.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Fatalf("read: %d, %v; want 0, io.EOF", n, err)
	}
}

// ==== 3. refusals

// Istio's client with an SVID from a CA our bundle does not hold (same trust domain, other
// root) is refused in the TLS handshake: no request reaches the handler or the upstream.
func TestOurServerRefusesUntrustedIstioClient(t *testing.T) {
	p := newPKI(t)
	up := startUpstream(t, echo)
	srv := startOurServer(t, p)
	rogue, err := identity.NewCA(identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	d := istioDialer(srv.addr, issue(t, rogue, p.clientID), p.ca.Bundle(), p.serverID)
	c, err := d.Dial("tcp", up.addr.String())
	if err == nil {
		c.Close()
		t.Fatal("our server accepted a client SVID from an untrusted CA")
	}
	// In TLS 1.3 the client's handshake ends before the server judges its certificate, so
	// what Istio's client reports depends on timing: the bad_certificate alert, "client
	// conn could not be established", or a broken pipe. Our server's log says why.
	if !strings.HasPrefix(err.Error(), "round trip: ") {
		t.Errorf("err %v; want Istio's round trip to fail", err)
	}
	const why = "verify client: verify peer " // then the client's ID
	wait.Until(t, ioTimeout, "our server to log the refused handshake", func() error {
		if logs := srv.logs.String(); !strings.Contains(logs, "hbone handshake refused") {
			return fmt.Errorf("log:\n%s", logs)
		}
		return nil
	})
	if logs := srv.logs.String(); !strings.Contains(logs, why+p.clientID.String()+": peer certificate chain is not trusted") {
		t.Errorf("our server refused the handshake for another reason; log:\n%s", logs)
	}
	if n := len(srv.requests()); n != 0 {
		t.Errorf("handler ran %d times; want 0", n)
	}
	if n := up.accepts.Load(); n != 0 {
		t.Errorf("upstream was dialled %d times; want 0", n)
	}

	// Control: the same server and dialer settings with a trusted SVID get through.
	d = istioDialer(srv.addr, issue(t, p.ca, p.clientID), p.ca.Bundle(), p.serverID)
	c, err = d.Dial("tcp", up.addr.String())
	if err != nil {
		t.Fatalf("trusted client: %v", err)
	}
	defer c.Close()
	if got, err := roundTrip(c, []byte("trusted")); err != nil || string(got) != "trusted" {
		t.Fatalf("trusted client echo: %q, %v", got, err)
	}
	if reqs := srv.requests(); len(reqs) != 1 || reqs[0].peer != p.clientID {
		t.Fatalf("handler saw %v; want one request from %s", reqs, p.clientID)
	}
}

// Our client refuses Istio's server when it proves an identity other than the expected
// one, with a chain our bundle trusts or not.
func TestOurClientRefusesUnexpectedIstioServerIdentity(t *testing.T) {
	p := newPKI(t)
	rogue, err := identity.NewCA(identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	impostor := workloadID(t, "impostor")
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want string
	}{
		{"trusted chain, other identity", issue(t, p.ca, impostor), "server identity " + impostor.String() + " is not one of the expected"},
		{"expected identity, untrusted chain", issue(t, rogue, p.serverID), "verify server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, echo)
			addr := startIstioServer(t, tc.cert, p.ca.Bundle())
			cl := ourClient(t, p)
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			st, err := cl.Dial(ctx, hbone.Target{Source: p.clientID, Address: addr, Identities: []spiffeid.ID{p.serverID}, Authority: up.addr})
			if err == nil {
				st.Close()
				t.Fatal("our client accepted Istio's server with the wrong SVID")
			}
			if !errors.Is(err, hbone.ErrIdentity) {
				t.Fatalf("err %v (%T); want errors.Is hbone.ErrIdentity", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v; want it to mention %q", err, tc.want)
			}
			if n := up.accepts.Load(); n != 0 {
				t.Errorf("upstream was dialled %d times; want 0", n)
			}
			if n := cl.Conns(); n != 0 {
				t.Errorf("our client pooled %d connections; want 0", n)
			}
		})
	}
}
