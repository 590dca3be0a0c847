package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// lineLog records every log line at info and above, with its attributes.
type lineLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *lineLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (l *lineLog) Handle(_ context.Context, r slog.Record) error {
	s := r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.mu.Lock()
	l.msgs = append(l.msgs, s)
	l.mu.Unlock()
	return nil
}

// WithAttrs keeps the pod the logger was made for.
func (l *lineLog) WithAttrs(as []slog.Attr) slog.Handler { return &attrLog{l, as} }
func (l *lineLog) WithGroup(string) slog.Handler         { return l }

type attrLog struct {
	l  *lineLog
	as []slog.Attr
}

func (a *attrLog) Enabled(ctx context.Context, lv slog.Level) bool { return a.l.Enabled(ctx, lv) }
func (a *attrLog) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(a.as...)
	return a.l.Handle(ctx, r)
}
func (a *attrLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrLog{a.l, append(append([]slog.Attr{}, a.as...), as...)}
}
func (a *attrLog) WithGroup(string) slog.Handler { return a }

func (l *lineLog) lines(prefix string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// waitLine waits for exactly one line starting with prefix and containing want.
func (l *lineLog) waitLine(t *testing.T, prefix string, want ...string) {
	t.Helper()
	wait.Until(t, 5*time.Second, fmt.Sprintf("a log line %q", prefix), func() error {
		if len(l.lines(prefix)) == 0 {
			return errors.New("none logged")
		}
		return nil
	})
	got := l.lines(prefix)
	if len(got) != 1 {
		t.Fatalf("logged %q %d times, want once: %q", prefix, len(got), got)
	}
	for _, w := range want {
		if !strings.Contains(got[0], w) {
			t.Fatalf("log line %q lacks %q", got[0], w)
		}
	}
}

// expectHangUp reads from c until the server closes it; it fails if that takes longer
// than within.
func expectHangUp(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("server kept the connection for more than %s", within)
	}
}

// A client that connects to 15008 and never starts TLS is cut at the handshake timeout.
func TestSilentClientOnHBONEPort(t *testing.T) {
	l := &lineLog{}
	m := newMeshWith(t, func(n *Node) {
		n.Logger = slog.New(l)
		n.HBONE.HandshakeTimeout = 200 * time.Millisecond
	})
	_ = m
	c, err := net.Dial("tcp", serverIP+":15008")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	expectHangUp(t, c, 5*time.Second)
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("cut after %s, before the handshake timeout", d)
	}
	l.waitLine(t, "hbone handshake refused", "pod=shop/server")
}

// A client that completes TLS and the HTTP/2 preface, then stops half way through a
// CONNECT request's headers, is cut: it cannot answer the server's PING without breaking
// off the header block.
func TestClientStuckInConnectHeaders(t *testing.T) {
	l := &lineLog{}
	m := newMeshWith(t, func(n *Node) {
		n.Logger = slog.New(l)
		n.HBONE.PingInterval = 100 * time.Millisecond
		n.HBONE.PingTimeout = 200 * time.Millisecond
	})
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	cert, err := m.node.Certs(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", serverIP+":15008", &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*cert},
		InsecureSkipVerify: true, // the server's identity is not what this test is about
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	_ = enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = enc.WriteField(hpack.HeaderField{Name: ":authority", Value: serverIP + ":8080"})
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The first half of the header block, and never the CONTINUATION.
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes()[:block.Len()/2]}); err != nil {
		t.Fatal(err)
	}
	expectHangUp(t, tc, 5*time.Second)
	l.waitLine(t, "hbone connection dropped", "pod=shop/server", "PING")
}

// Clients that connect to 15001 or 15006 and send nothing are carried: the application
// gets its connection, nothing is cut, and everything is released when they close.
func TestIdleClientsCarried(t *testing.T) {
	m := newMesh(t)
	ln, err := net.Listen("tcp", serverIP+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted, ended atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
				ended.Add(1)
			}()
		}
	}()
	m.mu.Lock()
	m.dst = netip.MustParseAddrPort(serverIP + ":8080")
	m.mu.Unlock()
	_, out, _ := m.client.Addrs()
	var conns []net.Conn
	for _, addr := range []string{out.String(), serverIP + ":15006"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	wait.Until(t, 5*time.Second, "the application accepted both connections", func() error {
		if n := accepted.Load(); n != 2 {
			return fmt.Errorf("%d accepted", n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("idle connection %d cut: %v", i, err)
		}
		c.Close()
	}
	wait.Until(t, 5*time.Second, "the application's connections ended", func() error {
		if n := ended.Load(); n != 2 {
			return fmt.Errorf("%d ended", n)
		}
		return nil
	})
	wait.Until(t, 5*time.Second, "the proxies released the connections", func() error {
		if c, s := m.client.openConns(), m.server.openConns(); c != 0 || s != 0 {
			return fmt.Errorf("%d open in the client's proxy, %d in the server's", c, s)
		}
		return nil
	})
}
