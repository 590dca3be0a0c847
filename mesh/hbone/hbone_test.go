package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestRoundTripCarriesIdentityAndHeaders(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		// The handler runs on the server's goroutine; a channel, not a shared variable,
		// hands its view of the request to the test (the echo through a socket is no
		// happens-before edge the race detector can see).
		gotc := make(chan Request, 1)
		e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
			gotc <- *r
			_ = Forward(ctx, r, dialTCP)
		})
		tgt := e.target()
		tgt.Forwarded = netip.MustParseAddrPort("10.1.2.3:4567")
		tgt.Traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		tgt.Baggage = "k=v"
		st, err := e.client.Dial(context.Background(), tgt)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if st.Protocol() != e.proto {
			t.Errorf("stream travels on %s, want %s", st.Protocol(), e.proto)
		}
		if st.PeerIdentity() != e.serverID {
			t.Errorf("client saw server %s, want %s", st.PeerIdentity(), e.serverID)
		}
		msg := []byte("hello through the tunnel")
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, msg) {
			t.Fatalf("echo = %q", buf)
		}
		var got Request
		select {
		case got = <-gotc:
		case <-time.After(5 * time.Second):
			t.Fatal("handler not called")
		}
		if got.Protocol != e.proto {
			t.Errorf("request arrived on %s, want %s", got.Protocol, e.proto)
		}
		if got.Peer != e.clientID {
			t.Errorf("server saw peer %s, want %s", got.Peer, e.clientID)
		}
		if got.Authority != e.echo || got.Forwarded != tgt.Forwarded || got.Traceparent != tgt.Traceparent || got.Baggage != "k=v" {
			t.Errorf("request = %+v", got)
		}
	})
}

// TestIdentityRefusals: a handshake succeeds only with the expected identity.
func TestIdentityRefusals(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		past := identitytest.NewFakeClock(time.Now().Add(-72 * time.Hour))
		other := newTestCA(t, "cluster.local")   // same trust domain, different root
		foreign := newTestCA(t, "other.example") // other trust domain
		stale := newTestCA(t, "cluster.local", func(o *identity.CAOptions) { o.Clock = past })

		tests := []struct {
			name string
			// serverCert and clientCert replace the env's certificates when set.
			serverCert func(e *env) *tls.Certificate
			clientCert func(e *env) *tls.Certificate
			expect     func(e *env) []spiffeid.ID
			want       string
		}{
			{
				name:   "wrong SAN",
				expect: func(e *env) []spiffeid.ID { return []spiffeid.ID{e.ca.id("default", "someone-else")} },
				want:   "is not one of the expected",
			},
			{
				name:       "server from other trust domain",
				serverCert: func(e *env) *tls.Certificate { return foreign.issue(t, foreign.id("default", "server"), 0) },
				expect:     func(e *env) []spiffeid.ID { return []spiffeid.ID{foreign.id("default", "server")} },
				want:       "no trust bundle for the peer's trust domain",
			},
			{
				name:       "server with untrusted root",
				serverCert: func(e *env) *tls.Certificate { return other.issue(t, e.serverID, 0) },
				want:       "not trusted",
			},
			{
				name:       "server certificate expired",
				serverCert: func(e *env) *tls.Certificate { return stale.issue(t, e.serverID, time.Hour) },
				want:       "expired",
			},
			{
				name:       "client from other trust domain",
				clientCert: func(e *env) *tls.Certificate { return foreign.issue(t, foreign.id("default", "client"), 0) },
				want:       "bad certificate",
			},
			{
				name:       "client with untrusted root",
				clientCert: func(e *env) *tls.Certificate { return other.issue(t, e.clientID, 0) },
				want:       "bad certificate",
			},
			{
				name:       "client certificate expired",
				clientCert: func(e *env) *tls.Certificate { return stale.issue(t, e.clientID, time.Hour) },
				want:       "bad certificate",
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				e := newEnv(t, proto)
				var served atomic.Bool
				e.handler = HandlerFunc(func(ctx context.Context, r *Request) { served.Store(true); _ = Forward(ctx, r, dialTCP) })
				if tc.serverCert != nil {
					e.certs.set(e.serverID, tc.serverCert(e))
				}
				if tc.clientCert != nil {
					e.certs.set(e.clientID, tc.clientCert(e))
				}
				tgt := e.target()
				if tc.expect != nil {
					tgt.Identities = tc.expect(e)
				}
				st, err := e.client.Dial(context.Background(), tgt)
				if err == nil {
					st.Close()
					t.Fatal("dial succeeded")
				}
				if !errors.Is(err, ErrIdentity) {
					t.Errorf("error kind: got %v, want identity", err)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not say %q", err, tc.want)
				}
				if served.Load() {
					t.Error("handler ran for a refused peer")
				}
			})
		}
	})
}

func TestClientWithoutCertificateRefused(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		tc, err := tls.Dial("tcp", e.addr.String(), &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake: %v", err) // TLS 1.3 clients finish before the server's verdict
		}
		defer tc.Close()
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = tc.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		_, err = tc.Read(make([]byte, 1))
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("read after certificate-less handshake: %v, want certificate required alert", err)
		}
	})
}

func TestTLS12Refused(t *testing.T) {
	e := newEnv(t)
	cert, _ := e.certs.get(context.Background(), e.clientID)
	_, err := tls.Dial("tcp", e.addr.String(), &tls.Config{MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}})
	if err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.2 handshake: %v, want protocol version alert", err)
	}
}

// TestHalfCloseClientFirst: the client ends its write side and still reads the whole reply.
func TestHalfCloseClientFirst(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		// The application reads the whole request before it answers, as an HTTP/1.0 server or
		// a "read until EOF" RPC does.
		e.echo = startTCP(t, func(c *net.TCPConn) {
			req, _ := io.ReadAll(c)
			_, _ = fmt.Fprintf(c, "got %d bytes: %s", len(req), bytes.ToUpper(req))
			_ = c.CloseWrite()
		})
		st, err := e.client.Dial(context.Background(), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, err := io.ReadAll(st)
		if err != nil {
			t.Fatal(err)
		}
		if string(reply) != "got 7 bytes: REQUEST" {
			t.Fatalf("reply = %q", reply)
		}
		if _, err := st.Write([]byte("x")); err == nil {
			t.Fatal("write after CloseWrite succeeded")
		}
	})
}

// TestHalfCloseServerFirst: the server side ends first; the client sees EOF and can still send.
func TestHalfCloseServerFirst(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		received := make(chan string, 1)
		e.echo = startTCP(t, func(c *net.TCPConn) {
			_, _ = c.Write([]byte("banner"))
			_ = c.CloseWrite()
			rest, _ := io.ReadAll(c)
			received <- string(rest)
		})
		st, err := e.client.Dial(context.Background(), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		banner, err := io.ReadAll(st)
		if err != nil || string(banner) != "banner" {
			t.Fatalf("read = %q, %v", banner, err)
		}
		for i := range 3 {
			if _, err := fmt.Fprintf(st, "after-eof-%d;", i); err != nil {
				t.Fatalf("write after peer EOF: %v", err)
			}
		}
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-received:
			if got != "after-eof-0;after-eof-1;after-eof-2;" {
				t.Fatalf("server received %q", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("server never saw the client's data and FIN")
		}
	})
}

// TestThousandConcurrentStreams runs 1,000 streams at once over the pool.
// TestSpliceCountsBothWays: Splice reports every byte it carried each way, on both ends of
// the tunnel, including those the read loop hands straight to the destination socket
// (which is how request/response traffic usually travels). Proxies report these counts as
// their byte metrics.
func TestSpliceCountsBothWays(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		server := make(chan [2]int64, 1)
		e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
			up, err := dialTCP(ctx, r.Authority)
			if err != nil {
				_ = r.Reject(503, err.Error())
				return
			}
			st, err := r.Accept()
			if err != nil {
				up.Close()
				return
			}
			toApp, fromApp, _ := Splice(st, up)
			server <- [2]int64{toApp, fromApp}
		})
		// app is the client application's socket; its peer, in, is what the proxy splices.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		app, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		in, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		st, err := e.client.Dial(context.Background(), e.target())
		if err != nil {
			t.Fatal(err)
		}
		client := make(chan [2]int64, 1)
		go func() {
			sent, received, _ := Splice(in.(*net.TCPConn), st)
			client <- [2]int64{sent, received}
		}()
		_ = app.SetDeadline(time.Now().Add(10 * time.Second))
		const rounds, size = 50, 100
		msg, reply := bytes.Repeat([]byte("x"), size), make([]byte, size)
		for i := 0; i < rounds; i++ {
			if _, err := app.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(app, reply); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		_ = app.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(app); err != nil || len(rest) != 0 {
			t.Fatalf("after the half-close: %q, %v", rest, err)
		}
		want := [2]int64{rounds * size, rounds * size}
		for _, side := range []struct {
			name string
			ch   chan [2]int64
		}{{"client (sent, received)", client}, {"server (to app, from app)", server}} {
			select {
			case got := <-side.ch:
				if got != want {
					t.Errorf("%s = %v, want %v", side.name, got, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: splice did not end", side.name)
			}
		}
	})
}

func TestThousandConcurrentStreams(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		const n = 1000
		var (
			wg           sync.WaitGroup
			opened, fail atomic.Int32
			open         = make(chan struct{})
		)
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := e.client.Dial(context.Background(), e.target())
				if err != nil {
					fail.Add(1)
					errs <- err
					return
				}
				opened.Add(1)
				<-open // hold every stream open at the same time
				msg := fmt.Appendf(nil, "stream %d payload", i)
				if _, err := st.Write(msg); err != nil {
					errs <- err
					return
				}
				buf := make([]byte, len(msg))
				if _, err := io.ReadFull(st, buf); err != nil || !bytes.Equal(buf, msg) {
					errs <- fmt.Errorf("stream %d: %q %v", i, buf, err)
					return
				}
				st.Close()
			}()
		}
		// Wait until every dial returned before letting any stream finish.
		deadline := time.Now().Add(60 * time.Second)
		for {
			if opened.Load()+fail.Load() == n || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		conns := e.client.Conns()
		close(open)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if conns < n/DefaultClientMaxStreams || conns > n/DefaultClientMaxStreams+5 {
			t.Errorf("pool held %d connections for %d concurrent streams; want about %d", conns, n, n/DefaultClientMaxStreams)
		}
	})
}

// TestPoolKeyedBySource: connections are reused for one source identity and never shared
// across two.
func TestPoolKeyedBySource(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		other := e.ca.id("default", "other-client")
		e.certs.set(other, e.ca.issue(t, other, 0))
		peers := make(chan spiffeid.ID, 10)
		e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
			peers <- r.Peer
			_ = Forward(ctx, r, dialTCP)
		})
		roundTrip := func(src spiffeid.ID) {
			tgt := e.target()
			tgt.Source = src
			st, err := e.client.Dial(context.Background(), tgt)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
		}
		roundTrip(e.clientID)
		roundTrip(e.clientID)
		if n := e.client.Conns(); n != 1 {
			t.Fatalf("after two streams from one source: %d connections, want 1", n)
		}
		roundTrip(other)
		if n := e.client.Conns(); n != 2 {
			t.Fatalf("after a stream from a second source: %d connections, want 2", n)
		}
		for _, want := range []spiffeid.ID{e.clientID, e.clientID, other} {
			if got := <-peers; got != want {
				t.Errorf("server saw %s, want %s", got, want)
			}
		}
	})
}

func TestSpoofedAuthorityRefused(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		var served atomic.Bool
		e.handler = HandlerFunc(func(ctx context.Context, r *Request) { served.Store(true); _ = r.Reject(500, "unreachable") })
		tgt := e.target()
		tgt.Authority = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), e.echo.Port())
		_, err := e.client.Dial(context.Background(), tgt)
		var he *Error
		if !errors.As(err, &he) || he.Kind != KindProtocol || he.Status != 400 {
			t.Fatalf("spoofed authority: %v, want 400", err)
		}
		if !strings.Contains(he.Reason, "does not match") {
			t.Errorf("reason %q does not explain the refusal", he.Reason)
		}
		if served.Load() {
			t.Error("handler ran for a spoofed authority")
		}
	})
}

func TestUnreachableDestination503(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		tgt := e.target()
		tgt.Authority = dead
		_, err := e.client.Dial(context.Background(), tgt)
		var he *Error
		if !errors.As(err, &he) || he.Kind != KindDial || he.Status != 503 {
			t.Fatalf("dial to a closed port: %v, want 503 dial error", err)
		}
		if !strings.Contains(he.Reason, "connection refused") {
			t.Errorf("reason %q does not say why", he.Reason)
		}
	})
}

func TestHandlerRejectMapsToKinds(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		for _, tc := range []struct {
			status int
			kind   Kind
		}{{400, KindProtocol}, {401, KindDenied}, {403, KindDenied}, {503, KindDial}} {
			e := newEnv(t, proto)
			e.handler = HandlerFunc(func(ctx context.Context, r *Request) { _ = r.Reject(tc.status, "because") })
			_, err := e.client.Dial(context.Background(), e.target())
			var he *Error
			if !errors.As(err, &he) || he.Kind != tc.kind || he.Status != tc.status || he.Reason != "because" {
				t.Errorf("reject %d: got %v, want kind %v", tc.status, err, tc.kind)
			}
		}
	})
}

// TestRotationUnderLiveStreams swaps both sides' certificates while streams are open: none
// drops, and new connections use the new certificates.
func TestRotationUnderLiveStreams(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		const n = 50
		var wg sync.WaitGroup
		errs := make(chan error, n)
		rotated := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := e.client.Dial(context.Background(), e.target())
				if err != nil {
					errs <- err
					return
				}
				defer st.Close()
				for round := 0; round < 20; round++ {
					if round == 10 {
						<-rotated
					}
					msg := fmt.Appendf(nil, "s%d-r%d", i, round)
					if _, err := st.Write(msg); err != nil {
						errs <- err
						return
					}
					buf := make([]byte, len(msg))
					if _, err := io.ReadFull(st, buf); err != nil || !bytes.Equal(buf, msg) {
						errs <- fmt.Errorf("stream %d round %d: %q %v", i, round, buf, err)
						return
					}
				}
			}()
		}
		time.Sleep(100 * time.Millisecond)
		newServer := e.ca.issue(t, e.serverID, 0)
		e.certs.set(e.serverID, newServer)
		e.certs.set(e.clientID, e.ca.issue(t, e.clientID, 0))
		close(rotated)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		// A connection from a different source forces a new handshake, which must see the new
		// server certificate.
		fresh := e.ca.id("default", "fresh")
		e.certs.set(fresh, e.ca.issue(t, fresh, 0))
		tgt := e.target()
		tgt.Source = fresh
		st, err := e.client.Dial(context.Background(), tgt)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		var cs tls.ConnectionState
		if st.q != nil {
			cs = st.q.c.qc.ConnectionState().TLS
		} else {
			cs = st.c.nc.(*tls.Conn).ConnectionState()
		}
		if cs.PeerCertificates[0].SerialNumber.Cmp(newServer.Leaf.SerialNumber) != 0 {
			t.Error("new connection did not present the rotated server certificate")
		}
	})
}

func TestShutdownDrains(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		st, err := e.client.Dial(context.Background(), e.target())
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done <- e.server.Shutdown(ctx)
		}()
		time.Sleep(50 * time.Millisecond)
		// The open stream still works during the drain.
		if _, err := st.Write([]byte("drain")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatal(err)
		}
		st.CloseWrite()
		io.Copy(io.Discard, st)
		st.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("shutdown: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("shutdown did not finish after the last stream closed")
		}
	})
}

// TestServeAfterShutdown: a shutdown that comes before Serve or ServeH3 started (a process
// told to stop while it starts) makes them return nil, as after any shutdown, and close what
// they were given.
func TestServeAfterShutdown(t *testing.T) {
	e := newEnv(t)
	if err := e.server.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.server.Serve(ln); err != nil {
		t.Errorf("Serve after Shutdown: %v, want nil", err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("Serve after Shutdown left its listener open")
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.server.ServeH3(pc); err != nil {
		t.Errorf("ServeH3 after Shutdown: %v, want nil", err)
	}
	if _, err := pc.WriteTo([]byte("x"), pc.LocalAddr()); err == nil {
		t.Error("ServeH3 after Shutdown left its socket open")
	}
}

// TestStreamQuiet: a stream is quiet until something arrives that its reader has not taken
// (bytes, then the peer's END_STREAM); over HTTP/3 it cannot tell without reading.
func TestStreamQuiet(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto)
		ended := make(chan struct{})
		e.echo = startTCP(t, func(c *net.TCPConn) {
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err == nil {
				_, _ = c.Write(b)
			}
			<-ended
			_ = c.CloseWrite()
			_, _ = io.Copy(io.Discard, c)
		})
		st, err := e.client.Dial(context.Background(), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		defer close(ended)
		quiet := func(want bool, what string) {
			t.Helper()
			wait.Until(t, 5*time.Second, what, func() error {
				if q, known := st.Quiet(); !known || q != want {
					return fmt.Errorf("Quiet() = %v, %v; want %v, true", q, known, want)
				}
				return nil
			})
		}
		if st.Protocol() == ProtocolH3 {
			if _, known := st.Quiet(); known {
				t.Fatal("a stream over HTTP/3 claims to know whether it is quiet")
			}
			return
		}
		quiet(true, "a new stream quiet")
		if _, err := st.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		quiet(false, "the echoed byte seen")
		if q, _ := st.Quiet(); q {
			t.Fatal("Quiet consumed the byte")
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(st, b); err != nil || b[0] != 'x' {
			t.Fatalf("read %q, %v", b, err)
		}
		quiet(true, "quiet again once the byte is read")
		ended <- struct{}{}
		quiet(false, "the peer's END_STREAM seen")
	})
}
