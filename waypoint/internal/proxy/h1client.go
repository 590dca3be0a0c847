package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// h1Client is the waypoint's HTTP/1.1 client to pods. It makes each exchange on the
// goroutine that asks for it: the request is written and the response head read there,
// and the body is read by whoever reads the response. net/http's Transport instead runs a
// write loop and a read loop per connection and hands every request and response between
// them and the caller over channels; on a lightly loaded machine each hand-over wakes a
// thread, and those wake-ups were most of the waypoint's CPU per request
// (docs/benchmarks.md). Idle connections are pooled per address.
type h1Client struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// maxIdle bounds the idle connections kept per address, maxIdleTotal all of them;
	// idleTimeout closes one left idle that long.
	maxIdle, maxIdleTotal int
	idleTimeout           time.Duration
	// maxHeaderBytes bounds a response's head (status line and headers).
	maxHeaderBytes int64

	mu     sync.Mutex
	idle   map[string][]*h1Conn
	nidle  int
	closed bool
}

// h1Conn is one connection to a pod with its buffers.
type h1Conn struct {
	c     net.Conn
	lr    *allowanceReader
	br    *bufio.Reader
	bw    *bufio.Writer
	timer *time.Timer // closes the connection once idle too long
	addr  string
}

// allowanceReader reads from r while its allowance lasts: the head of a response is read
// with a bounded allowance, its body without one.
type allowanceReader struct {
	r     io.Reader
	left  int64
	bound bool
	read  int64 // bytes read since the exchange started
}

var errHeadTooLarge = errors.New("response headers too large")

func (a *allowanceReader) Read(p []byte) (int, error) {
	if a.bound {
		if a.left <= 0 {
			return 0, errHeadTooLarge
		}
		if int64(len(p)) > a.left {
			p = p[:a.left]
		}
	}
	n, err := a.r.Read(p)
	a.read += int64(n)
	if a.bound {
		a.left -= int64(n)
	}
	return n, err
}

func newH1Client(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *h1Client {
	return &h1Client{dial: dial, maxIdle: 128, maxIdleTotal: 1024, idleTimeout: 90 * time.Second, maxHeaderBytes: 1 << 20,
		idle: make(map[string][]*h1Conn)}
}

// RoundTrip sends req (absolute URL with host:port) and reads the response head. A
// connection taken from the pool that turns out to have been closed by the pod before any
// byte of the response came is replaced once by a new one, when the request can be sent
// again (as net/http does: no body or a replayable one, and an idempotent method). Pooled
// connections the pod closed while they idled are mostly caught before use (see alive).
func (t *h1Client) RoundTrip(req *http.Request) (*http.Response, error) {
	addr := req.URL.Host
	for retried := false; ; retried = true {
		pc, reused, err := t.get(req.Context(), addr, retried)
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		if !reused || retried || pc.lr.read > 0 || req.Context().Err() != nil || !replayable(req) {
			return nil, err
		}
	}
}

// replayable: the request can be sent again after a connection failed under it.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, "":
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// get returns an idle connection to addr that is still alive, or a new one (always a new
// one when fresh is set).
func (t *h1Client) get(ctx context.Context, addr string, fresh bool) (pc *h1Conn, reused bool, err error) {
	for !fresh {
		t.mu.Lock()
		if n := len(t.idle[addr]); n > 0 {
			pc = t.takeLocked(addr, n-1)
		}
		t.mu.Unlock()
		if pc == nil {
			break
		}
		pc.timer.Stop()
		if pc.alive() {
			return pc, true, nil
		}
		pc.c.Close()
		pc = nil
	}
	c, err := t.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	pc = &h1Conn{c: c, addr: addr}
	pc.lr = &allowanceReader{r: c}
	pc.br = bufio.NewReaderSize(pc.lr, 4096)
	pc.bw = bufio.NewWriterSize(c, 4096)
	return pc, false, nil
}

// alive reports whether an idle connection can carry a request: nothing arrived on it
// while it idled, neither the pod's end nor bytes no request asked for. A socket is
// peeked without blocking; an HTTP/2 tunnel stream says so itself (Quiet); an HTTP/3 one
// is read with a deadline already passed, which returns what the stream holds or times
// out (a QUIC stream times out first: its dead connections are caught at use, and
// RoundTrip replaces them).
func (pc *h1Conn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	if qs, ok := pc.c.(interface{ Quiet() (quiet, known bool) }); ok {
		if quiet, known := qs.Quiet(); known {
			return quiet
		}
	}
	if sc, ok := pc.c.(syscall.Conn); ok {
		rc, err := sc.SyscallConn()
		if err != nil {
			return false
		}
		empty := false
		var b [1]byte
		err = rc.Read(func(fd uintptr) bool {
			_, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			empty = rerr == unix.EAGAIN
			return true
		})
		return err == nil && empty
	}
	if err := pc.c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return false
	}
	_, err := pc.br.Peek(1)
	if err := pc.c.SetReadDeadline(time.Time{}); err != nil {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// put keeps pc for the next request to its address, or closes it.
func (t *h1Client) put(pc *h1Conn) {
	t.mu.Lock()
	if t.closed || len(t.idle[pc.addr]) >= t.maxIdle || t.nidle >= t.maxIdleTotal || pc.br.Buffered() > 0 {
		t.mu.Unlock()
		pc.c.Close()
		return
	}
	t.idle[pc.addr] = append(t.idle[pc.addr], pc)
	t.nidle++
	if pc.timer == nil {
		pc.timer = time.AfterFunc(t.idleTimeout, func() { t.expire(pc) })
	} else {
		pc.timer.Reset(t.idleTimeout)
	}
	t.mu.Unlock()
}

// takeLocked removes the i-th idle connection to addr from the pool and returns it. Caller
// holds t.mu.
func (t *h1Client) takeLocked(addr string, i int) *h1Conn {
	conns := t.idle[addr]
	pc := conns[i]
	conns = slices.Delete(conns, i, i+1) // zeroes the freed slot
	if len(conns) == 0 {
		delete(t.idle, addr)
	} else {
		t.idle[addr] = conns
	}
	t.nidle--
	return pc
}

// expire closes pc if it is still idle.
func (t *h1Client) expire(pc *h1Conn) {
	t.mu.Lock()
	for i, c := range t.idle[pc.addr] {
		if c == pc {
			t.takeLocked(pc.addr, i)
			t.mu.Unlock()
			pc.c.Close()
			return
		}
	}
	t.mu.Unlock()
}

// close closes the idle connections and keeps none from now on.
func (t *h1Client) close() {
	t.mu.Lock()
	t.closed = true
	idle := t.idle
	t.idle = make(map[string][]*h1Conn)
	t.nidle = 0
	t.mu.Unlock()
	for _, conns := range idle {
		for _, pc := range conns {
			pc.timer.Stop()
			pc.c.Close()
		}
	}
}

// exchange writes req on pc and reads the response head; the response's body gives pc
// back to the pool once read to its end. A request with a body is written by a goroutine
// of its own, so that a pod may answer before it has read the whole body.
func (t *h1Client) exchange(pc *h1Conn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// The request's context ends the exchange whenever it is done: closing the connection
	// ends a write or read blocked on it.
	stop := context.AfterFunc(ctx, func() { pc.c.Close() })
	pc.lr.read = 0
	var wrote chan error
	if req.Body != nil && req.Body != http.NoBody {
		wrote = make(chan error, 1)
		go func() { wrote <- writeRequest(pc.bw, req) }()
	} else if err := writeRequest(pc.bw, req); err != nil {
		stop()
		pc.c.Close()
		return nil, err
	}
	resp, err := t.readHead(pc, req)
	if err != nil {
		stop()
		pc.c.Close()
		if wrote != nil {
			// The write's own error says more (a pod that closed while the request
			// went out), if it has already ended; a write still waiting for the
			// client's body ends with the connection closed above, on its own.
			select {
			case werr := <-wrote:
				if werr != nil && ctx.Err() == nil {
					err = werr
				}
			default:
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	b := &h1Body{t: t, pc: pc, body: resp.Body, stop: stop, wrote: wrote, reuse: !resp.Close && !req.Close}
	if resp.Body == http.NoBody {
		// No body follows the head (HEAD, 204, 304, Content-Length 0): the connection
		// is free now.
		b.finish(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

func writeRequest(bw *bufio.Writer, req *http.Request) error {
	var err error
	if fastRequest(req) {
		err = writeRequestHead(bw, req)
	} else {
		err = req.Write(bw)
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

// readHead reads the final response head, skipping informational (1xx) ones; all the
// heads of one exchange share maxHeaderBytes, so an endless run of 1xx heads ends too.
func (t *h1Client) readHead(pc *h1Conn, req *http.Request) (*http.Response, error) {
	pc.lr.bound, pc.lr.left = true, t.maxHeaderBytes
	defer func() { pc.lr.bound = false }()
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			// A cut at the limit can surface as a malformed line rather than as the
			// allowance's error.
			if errors.Is(err, errHeadTooLarge) || pc.lr.left <= 0 {
				return nil, fmt.Errorf("response head over %d bytes", t.maxHeaderBytes)
			}
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("pod switched protocols on a request that asked for no upgrade")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue
		}
		return resp, nil
	}
}

// h1Body is a response's body: read to its end, it gives the connection back to the pool
// (when the request was written in full and neither side asked to close); closed before,
// it closes the connection, which also ends a Read blocked on another goroutine.
type h1Body struct {
	t     *h1Client
	pc    *h1Conn
	body  io.ReadCloser
	stop  func() bool
	wrote chan error
	reuse bool
	done  atomic.Bool // the connection is given back or closed
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

// finish gives the connection back or closes it, once: the first of an end read and a
// Close decides.
func (b *h1Body) finish(complete bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	reuse := complete && b.reuse && b.stop()
	if b.wrote != nil {
		// A request body still being written when the response has ended (the pod
		// answered early) costs the connection; the write ends on its own, at the
		// closed connection or the body's end.
		select {
		case err := <-b.wrote:
			reuse = reuse && err == nil
		default:
			reuse = false
		}
	}
	if reuse {
		b.t.put(b.pc)
		return
	}
	b.stop()
	b.pc.c.Close()
}
