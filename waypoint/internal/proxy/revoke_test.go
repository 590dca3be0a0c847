package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/revoke"
	"ambit.dev/mesh/revoke/revoketest"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// revokeBound is how soon after the state change a revoked identity's live connection must
// be closed.
const revokeBound = 2 * time.Second

// liveConn is a connection held open through the waypoint.
type liveConn struct {
	name string
	// next reads the next piece of data the connection carries (a tick of a streamed
	// response, an echo); an error means the connection is gone.
	next func() error
	// end blocks until the connection ends and returns the error that ended it.
	end func() error
}

// hanging is a backend whose /hang requests answer nothing until they end.
type hanging struct {
	started, ended chan struct{}
}

// ticks streams "tick\n" every 20 ms until the request ends; /hang waits silently.
func (h *hanging) ticks(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hang" {
		h.started <- struct{}{}
		<-r.Context().Done()
		h.ended <- struct{}{}
		return
	}
	if r.URL.Path != "/stream" {
		ok(w, r)
		return
	}
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	for {
		if _, err := io.WriteString(w, "tick\n"); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tk.C:
		}
	}
}

// stream opens a streamed response through c and returns it as a live connection.
func stream(t *testing.T, name string, c *http.Client) liveConn {
	t.Helper()
	resp, err := c.Get("http://web/stream")
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d", name, resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	next := func() error {
		line, err := br.ReadString('\n')
		if err == nil && line != "tick\n" {
			err = fmt.Errorf("read %q", line)
		}
		return err
	}
	return liveConn{name: name, next: next, end: func() error {
		for {
			if err := next(); err != nil {
				return err
			}
		}
	}}
}

// echoConn opens an opaque TCP connection as id (from forwarded) to the echo service.
func echoConn(t *testing.T, e *env, name string, id spiffeid.ID, forwarded, authority string) liveConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.dialFrom(ctx, id, forwarded, authority)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	next := func() error {
		msg := "\x00ping, not HTTP\n"
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q", buf)
		}
		return nil
	}
	if err := next(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return liveConn{name: name, next: next, end: func() error {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if err == nil {
			err = errors.New("read data instead of the end")
		}
		return err
	}}
}

// syncBuffer is a log destination the test reads while the waypoint writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRevokedIdentityClosed: when a caller's workload leaves the state, the waypoint closes
// the live connections that carry its identity — a streamed HTTP/1 response, an HTTP/2
// stream, a TCP pass-through, and an HTTP/1 request still waiting for its backend (which
// sees it end) — within revokeBound, refuses new ones with 401, logs and counts it, and
// leaves another identity's connections alone. A workload that is only re-pushed keeps its
// connections; one that comes back is served again.
func TestRevokedIdentityClosed(t *testing.T) {
	logs := &syncBuffer{}
	e := newEnv(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	web := e.service("web", "10.96.0.10")
	h := &hanging{started: make(chan struct{}, 1), ended: make(chan struct{}, 1)}
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(h.ticks))
	echoSvc := e.service("echo", "10.96.0.20")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var appConns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); appConns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			appConns.Add(1)
			go func() { defer appConns.Done(); defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	e.podListener("echo-1", "10.244.0.21", echoSvc, ln.Addr().String())
	const echoVIP = "10.96.0.20:80"

	// The callers' workloads: X (service account client) and Y (other).
	x, y := sa("client"), sa("other")
	const xAddr, yAddr = "10.1.0.5:40000", "10.1.0.6:40000"
	caller := func(name, addr string) *configv1.Workload {
		return &configv1.Workload{Uid: "c//Pod/shop/" + name, Name: name, Namespace: "shop", ServiceAccount: name, WorkloadName: name,
			Addresses: [][]byte{netip.MustParseAddrPort(addr).Addr().AsSlice()}, TunnelProtocol: configv1.TunnelProtocol_HBONE}
	}
	xw, yw := caller("client", xAddr), caller("other", yAddr)
	e.apply(configv1.WorkloadTypeURL, map[string]proto.Message{xw.Uid: xw, yw.Uid: yw})

	xs := []liveConn{
		stream(t, "X HTTP/1", e.httpClientFrom(x, xAddr, webVIP, false)),
		stream(t, "X HTTP/2", e.httpClientFrom(x, xAddr, webVIP, true)),
		echoConn(t, e, "X TCP", x, xAddr, echoVIP),
	}
	ys := []liveConn{
		stream(t, "Y HTTP/1", e.httpClientFrom(y, yAddr, webVIP, false)),
		stream(t, "Y HTTP/2", e.httpClientFrom(y, yAddr, webVIP, true)),
		echoConn(t, e, "Y TCP", y, yAddr, echoVIP),
	}
	// An HTTP/1 request of X waiting for its backend, which says nothing: revocation must
	// end it at the backend too, not leave it waiting upstream.
	hangErr := make(chan error, 1)
	go func() {
		resp, err := e.httpClientFrom(x, xAddr, webVIP, false).Get("http://web/hang")
		if err != nil {
			hangErr <- nil // its connection was closed
			return
		}
		resp.Body.Close()
		hangErr <- fmt.Errorf("answered %d", resp.StatusCode)
	}()
	select {
	case <-h.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the hanging request never reached the backend")
	}
	if n := e.proxy.rev.Live(x); n != 4 {
		t.Fatalf("%d tunnels of X tracked, want 4", n)
	}

	// Re-pushed with a change (another revision, another address): the identity stays.
	xw2 := proto.Clone(xw).(*configv1.Workload)
	xw2.CanonicalRevision = "v2"
	e.apply(configv1.WorkloadTypeURL, map[string]proto.Message{xw.Uid: xw2})
	for _, c := range append(append([]liveConn{}, xs...), ys...) {
		if err := c.next(); err != nil {
			t.Fatalf("%s: broken by a re-push of its workload: %v", c.name, err)
		}
	}

	// X's workload is removed.
	type ended struct {
		name string
		took time.Duration
		err  error
	}
	results := make(chan ended, len(xs))
	start := time.Now()
	for _, c := range xs {
		go func() { err := c.end(); results <- ended{c.name, time.Since(start), err} }()
	}
	if err := e.proxy.Apply(configv1.WorkloadTypeURL, nil, []string{xw.Uid}); err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	for range xs {
		r := <-results
		if isTimeout(r.err) {
			t.Errorf("%s: the live connection of a revoked identity stayed open (%v after the state change: %v)", r.name, r.took, r.err)
			continue
		}
		t.Logf("%s: closed %v after the state change (%v)", r.name, r.took, r.err)
		if r.took > revokeBound {
			t.Errorf("%s: closed %v after the state change, want within %v", r.name, r.took, revokeBound)
		}
		slowest = max(slowest, r.took)
	}
	select {
	case <-h.ended:
		took := time.Since(start)
		t.Logf("X HTTP/1 request waiting upstream: ended at the backend %v after the state change", took)
		if took > revokeBound {
			t.Errorf("the upstream request of X ended %v after the state change, want within %v", took, revokeBound)
		}
		slowest = max(slowest, took)
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request of a revoked identity still waits at the backend 10 s after the state change")
	}
	if err := <-hangErr; err != nil {
		t.Errorf("X HTTP/1 request waiting upstream: %v, want its connection closed", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("every live connection of the revoked identity closed within %v", slowest)

	// Y's connections carry on.
	for _, c := range ys {
		if err := c.next(); err != nil {
			t.Fatalf("%s: another identity's live connection broke: %v", c.name, err)
		}
	}
	if code, body, _ := get(t, e.httpClientFrom(y, yAddr, webVIP, false), "GET", "http://web/"); code != 200 || body != "ok\n" {
		t.Fatalf("new request as Y: %d %q", code, body)
	}

	// New tunnels of X are refused with 401, saying why.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = e.dialFrom(ctx, x, xAddr, webVIP)
	var he *hbone.Error
	if !errors.As(err, &he) || he.Status != 401 || !strings.Contains(he.Reason, x.String()+" is no longer in the mesh") {
		t.Fatalf("new tunnel as X: %v, want 401 naming the revoked identity", err)
	}
	if _, err := e.httpClientFrom(x, xAddr, webVIP, false).Get("http://web/"); err == nil {
		t.Fatal("a new request as X was served")
	}
	if n := e.proxy.rev.Live(x); n != 0 {
		t.Fatalf("%d tunnels of X still tracked", n)
	}
	if got := revoketest.Count(e.reg, reporter, x, revoke.ResultClosed); got != 4 {
		t.Errorf("ambit_revoked_connections_total{result=closed} for X = %v, want 4", got)
	}
	if got := revoketest.Count(e.reg, reporter, x, revoke.ResultRefused); got != 2 {
		t.Errorf("ambit_revoked_connections_total{result=refused} for X = %v, want 2", got)
	}
	if got := revoketest.Count(e.reg, reporter, y, revoke.ResultClosed) + revoketest.Count(e.reg, reporter, y, revoke.ResultRefused); got != 0 {
		t.Errorf("ambit_revoked_connections_total for Y = %v, want 0", got)
	}
	for _, want := range []string{
		`msg="identity revoked: no workload or waypoint of the mesh carries it any more" identity=` + x.String() + " connections_closed=4",
		`msg="tunnel refused: caller identity revoked" identity=` + x.String(),
		`reason="no workload or waypoint of the mesh carries it any more"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}

	// X's workload comes back: X is served again.
	e.apply(configv1.WorkloadTypeURL, map[string]proto.Message{xw.Uid: xw})
	if code, _, _ := get(t, e.httpClientFrom(x, xAddr, webVIP, false), "GET", "http://web/"); code != 200 {
		t.Fatalf("request as X after its workload came back: %d", code)
	}
}
