package inpod

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"ambit.dev/proto/nodeapi"
	"ambit.dev/ztunnel/internal/capture"
	"ambit.dev/ztunnel/internal/netnstest"
	"ambit.dev/ztunnel/internal/proxy"
)

// startLineEcho runs a line echo server in the server pod, for long-lived connections, and
// reports each connection's remote and local address.
func startLineEcho(t *testing.T, n *node, addr string) <-chan [2]netip.AddrPort {
	t.Helper()
	ln, err := listenIn(n.server, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan [2]netip.AddrPort, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- [2]netip.AddrPort{c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return accepted
}

// longConn is a connection from the client pod that stays open across the hand-over.
type longConn struct {
	c net.Conn
	r *bufio.Reader
}

func (n *node) openLong(t *testing.T, addr string) *longConn {
	t.Helper()
	var c net.Conn
	err := capture.InNetns(n.client, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &longConn{c: c, r: bufio.NewReader(c)}
}

func (l *longConn) roundTrip(msg string) error {
	_ = l.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(l.c, msg+"\n"); err != nil {
		return err
	}
	got, err := l.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// TestHandOverKeepsEveryConnection replaces the node's ztunnel while a client opens a new
// connection every 50 ms through both captured pods, and long-lived connections opened
// before the hand-over keep working through it and end normally.
func TestHandOverKeepsEveryConnection(t *testing.T) {
	n := newNode(t)
	accepted := startLineEcho(t, n, "10.250.0.2:8082")
	ctx := t.Context()
	old, sock := serveAPI(t, n)
	for _, r := range []nodeapi.Registration{{UID: "client", NetNS: n.client}, {UID: "server", NetNS: n.server}} {
		if err := old.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	var long []*longConn
	for i := range 3 {
		l := n.openLong(t, "10.250.0.2:8082")
		if err := l.roundTrip(fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("long-lived connection before the hand-over: %v", err)
		}
		long = append(long, l)
	}

	// The client: a new connection every 50 ms, each must succeed.
	calls := netnstest.StartCalls(50*time.Millisecond, func() error {
		got, err := n.call()
		if err == nil && got != "echo: hi" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	time.Sleep(500 * time.Millisecond)

	// The new ztunnel: its own node proxy, the same state dir, taking over from the old
	// one through the old one's node API.
	pn2 := &proxy.Node{State: n.pn.State, Certs: n.pn.Certs, Bundle: n.pn.Bundle, TrustDomain: n.pn.TrustDomain, Logger: slog.New(slog.DiscardHandler)}
	succ := NewManager(pn2, n.st, Netns{}, filepath.Dir(n.m.file), slog.New(slog.DiscardHandler))
	t.Cleanup(func() {
		for _, p := range succ.Pods() {
			_ = succ.Remove(context.Background(), p.UID)
		}
	})
	if err := succ.TakeOver(ctx, sock); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.m.HandedOver():
	default:
		t.Fatal("old manager not handed over after TakeOver")
	}
	if pods := succ.Pods(); len(pods) != 2 || !pods[0].Captured || !pods[1].Captured {
		t.Fatalf("successor's pods = %+v", pods)
	}
	// The successor answers peer lookups of the connections the old one still carries.
	first := <-accepted
	sock2 := filepath.Join(t.TempDir(), "successor.sock")
	ln2, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: succ.Handler()}
	go func() { _ = srv2.Serve(ln2) }()
	defer srv2.Close()
	p, err := nodeapi.NewClient(sock2).Peer(ctx, first[0], first[1])
	if err != nil || p.Identity != "spiffe://cluster.local/ns/shop/sa/client" || !p.MTLS {
		t.Fatalf("successor's peer lookup of a connection the old ztunnel carries: %+v, %v", p, err)
	}
	// The old one refuses changes now: they belong to the successor.
	if err := old.Add(ctx, nodeapi.Registration{UID: "client", NetNS: n.client}); err == nil {
		t.Fatal("old ztunnel accepted a registration after the hand-over")
	}
	drained := make(chan struct{})
	drainStart := time.Now()
	go func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.m.Drain(dctx)
		close(drained)
	}()

	time.Sleep(time.Second) // new connections through the successor, old ones still open
	for i, l := range long {
		if err := l.roundTrip(fmt.Sprintf("after %d", i)); err != nil {
			t.Fatalf("long-lived connection %d after the hand-over: %v", i, err)
		}
		_ = l.c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(l.r); err != nil || len(b) != 0 {
			t.Fatalf("long-lived connection %d end: %q, %v", i, b, err)
		}
		l.c.Close()
	}
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("old ztunnel still draining after its connections ended")
	}
	if d := time.Since(drainStart); d > 5*time.Second {
		t.Errorf("drain took %s although every connection had ended", d)
	}
	time.Sleep(300 * time.Millisecond)
	ncalls, failures := calls.Stop()
	if len(failures) > 0 || ncalls < 20 {
		t.Fatalf("%d of %d connections failed during the hand-over:\n%v", len(failures), ncalls, failures)
	}
	t.Logf("%d connections, none failed", ncalls)
	// The successor serves alone now.
	if got, err := n.call(); err != nil || got != "echo: hi" {
		t.Fatalf("call after the old ztunnel drained = %q, %v", got, err)
	}
}
