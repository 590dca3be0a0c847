package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer accepts connections on loopback and runs serve on each; it counts them.
func rawServer(t *testing.T, serve func(c net.Conn)) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String(), accepted
}

// answer reads requests from c and answers each with resp until the client goes, or once
// when once is set (and then closes, without saying so).
func answer(resp string, once bool) func(net.Conn) {
	return func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, resp); err != nil || once {
				return
			}
		}
	}
}

func testH1Client() *h1Client {
	var d net.Dialer
	return newH1Client(d.DialContext)
}

func h1Get(t *testing.T, cl *h1Client, ctx context.Context, addr string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	return cl.RoundTrip(req)
}

// getBody makes a GET and reads the whole body.
func getBody(t *testing.T, cl *h1Client, addr string) string {
	t.Helper()
	resp, err := h1Get(t, cl, context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const okResp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// TestH1ClientReusesConnections: requests one after another share one connection, for
// bodies read to their end and for responses without a body; a body closed early, or a
// response that says Connection: close, costs the connection.
func TestH1ClientReusesConnections(t *testing.T) {
	addr, accepted := rawServer(t, answer(okResp, false))
	cl := testH1Client()
	defer cl.close()
	for range 10 {
		if got := getBody(t, cl, addr); got != "ok" {
			t.Fatalf("body %q", got)
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("10 requests took %d connections, want 1", n)
	}
	resp, err := h1Get(t, cl, context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // unread
	getBody(t, cl, addr)
	if n := accepted.Load(); n != 2 {
		t.Fatalf("after a body closed unread: %d connections, want 2", n)
	}

	noBody, accepted2 := rawServer(t, answer("HTTP/1.1 204 No Content\r\n\r\n", false))
	for range 5 {
		resp, err := h1Get(t, cl, context.Background(), noBody)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 204 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
	if n := accepted2.Load(); n != 1 {
		t.Fatalf("5 responses without a body took %d connections, want 1", n)
	}

	closing, accepted3 := rawServer(t, answer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", false))
	for range 3 {
		getBody(t, cl, closing)
	}
	if n := accepted3.Load(); n != 3 {
		t.Fatalf("3 responses with Connection: close took %d connections, want 3", n)
	}
}

// TestH1ClientReplacesStaleConnection: pooled connections the pod closed while they idled
// are left for a new one before any request goes out on them, so a POST with a body
// succeeds and is sent once; bytes no request asked for never become a response.
func TestH1ClientReplacesStaleConnection(t *testing.T) {
	addr, accepted := rawServer(t, answer(okResp, true))
	cl := testH1Client()
	defer cl.close()
	// Two connections in the pool, both closed by the pod after their answer.
	var resps [2]*http.Response
	for i := range resps {
		var err error
		if resps[i], err = h1Get(t, cl, context.Background(), addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range resps {
		io.ReadAll(r.Body)
		r.Body.Close()
	}
	time.Sleep(50 * time.Millisecond)
	if got := getBody(t, cl, addr); got != "ok" {
		t.Fatalf("body %q", got)
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connections, want 3 (both stale ones left)", n)
	}
	time.Sleep(50 * time.Millisecond)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("data"))
	resp, err := cl.RoundTrip(req)
	if err != nil {
		t.Fatalf("POST after the pod closed the pooled connection: %v", err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := accepted.Load(); n != 4 {
		t.Fatalf("%d connections after the POST, want 4 (sent once, on a new one)", n)
	}

	// A pod that sends more than its answer (here a 408 after it) loses the connection.
	extra, accepted2 := rawServer(t, answer(okResp+"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n", false))
	for range 3 {
		if got := getBody(t, cl, extra); got != "ok" {
			t.Fatalf("body %q", got)
		}
	}
	if n := accepted2.Load(); n != 3 {
		t.Fatalf("%d connections to a pod sending unasked bytes, want 3", n)
	}
}

// TestH1ClientStaleTunnelStream: a pod that closes its keep-alive connection after each
// answer ends the waypoint's pooled tunnel stream while it idles; the next request goes out
// on a new stream instead of failing on the ended one (alive, through hbone's Stream.Quiet):
// a POST, which is not sent again after a failure.
func TestH1ClientStaleTunnelStream(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	app, accepted := rawServer(t, answer(okResp, true))
	e.podListener("web-1", "10.244.0.11", web, app)
	c := e.httpClient(sa("client"), webVIP, false)
	for i := range 3 {
		resp, err := c.Post("http://web/", "text/plain", strings.NewReader("data"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond) // the pod's close reaches the pooled stream
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connections to the pod, want 3 (each ended one left)", n)
	}
}

// TestH1ClientSkipsInformational: 1xx heads before the final one are skipped; a 101 the
// request did not ask for is an error.
func TestH1ClientSkipsInformational(t *testing.T) {
	addr, _ := rawServer(t, answer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+okResp, false))
	cl := testH1Client()
	defer cl.close()
	if got := getBody(t, cl, addr); got != "ok" {
		t.Fatalf("body %q", got)
	}
	sw, _ := rawServer(t, answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", false))
	if resp, err := h1Get(t, cl, context.Background(), sw); err == nil {
		resp.Body.Close()
		t.Fatal("an unasked 101 was accepted")
	}
	// Informational heads without end count against one head limit.
	endless, _ := rawServer(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		for {
			if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
				return
			}
		}
	})
	cl.maxHeaderBytes = 16 << 10
	_, err := h1Get(t, cl, context.Background(), endless)
	if err == nil || !strings.Contains(err.Error(), "response head over") {
		t.Fatalf("endless 100 Continue: %v", err)
	}
}

// TestH1ClientBoundsHead: a response head over the limit is refused and its connection
// closed.
func TestH1ClientBoundsHead(t *testing.T) {
	closed := make(chan struct{})
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\nContent-Length: 0\r\n\r\n"
	addr, _ := rawServer(t, func(c net.Conn) {
		answer(big, false)(c)
		close(closed)
	})
	cl := testH1Client()
	cl.maxHeaderBytes = 16 << 10
	defer cl.close()
	_, err := h1Get(t, cl, context.Background(), addr)
	if err == nil || !strings.Contains(err.Error(), "response head over") {
		t.Fatalf("error %v, want the head refused", err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection of a refused head stayed open")
	}
}

// TestH1ClientContextEndsExchange: a request whose context ends while the pod is silent
// returns the context's error at once and closes the connection; so does one whose context
// ends while its body is read.
func TestH1ClientContextEndsExchange(t *testing.T) {
	gone := make(chan struct{}, 2)
	addr, _ := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err == nil && req.URL.Path == "/half" {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
		}
		_, _ = io.Copy(io.Discard, br) // until the client closes
		gone <- struct{}{}
	})
	cl := testH1Client()
	defer cl.close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h1Get(t, cl, ctx, addr)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the context's", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("returned after %v", d)
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection stayed open after the context ended")
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx2, http.MethodGet, "http://"+addr+"/half", nil)
	resp, err := cl.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, cancel2)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("a body cut by its context read to a clean end")
	}
	resp.Body.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection stayed open after the context ended during the body")
	}
}

// TestH1ClientEarlyAnswer: a pod that answers before reading the request's body gets its
// answer through, and the connection, whose request is still going out, is not reused.
func TestH1ClientEarlyAnswer(t *testing.T) {
	addr, accepted := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 3\r\n\r\nbig")
		_, _ = io.Copy(io.Discard, br)
	})
	cl := testH1Client()
	defer cl.close()
	body, w := io.Pipe()
	defer w.Close()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", body)
	go func() { _, _ = fmt.Fprint(w, "part of a body that never ends") }()
	resp, err := cl.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != "big" {
		t.Fatalf("got %d %q", resp.StatusCode, b)
	}
	req2, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	resp2, err := cl.RoundTrip(req2)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections to the early answerer, want 2 (the first not reused)", n)
	}
	cl.mu.Lock()
	idle := len(cl.idle[addr])
	cl.mu.Unlock()
	if idle != 1 {
		t.Fatalf("%d idle connections, want 1: the second one only", idle)
	}
}

// TestH1ClientCloseEndsRead: closing a body from another goroutine ends a Read blocked
// on it, and the connection is not pooled.
func TestH1ClientCloseEndsRead(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
		_, _ = io.Copy(io.Discard, c)
	})
	cl := testH1Client()
	defer cl.close()
	resp, err := h1Get(t, cl, context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(resp.Body)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	resp.Body.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a body closed half-way read to a clean end")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the blocked Read")
	}
	cl.mu.Lock()
	idle := cl.nidle
	cl.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d idle connections after a body closed half-way", idle)
	}
}
