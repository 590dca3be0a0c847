package hbone

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// TestRawConn: reads and writes through raw system calls behave as the socket's own: bytes
// arrive whole and in order (more than the socket buffers hold, so writes must wait for
// room), a half-close reads as io.EOF, a deadline fails a read as a timeout, a closed
// connection reports net.ErrClosed.
func TestRawConn(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawConn(a), newRawConn(b)
	if _, ok := ra.(*rawConn); !ok {
		t.Fatalf("newRawConn(%T) = %T, want *rawConn", a, ra)
	}
	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	werr := make(chan error, 1)
	go func() {
		n, err := ra.Write(payload)
		if err == nil && n != len(payload) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = ra.(*rawConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("read %d bytes, not the %d written (or not in order)", len(got), len(payload))
	}
	if n, err := rb.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer's half-close: %d, %v; want 0, EOF", n, err)
	}
	// The other direction still works after the half-close.
	if _, err := rb.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(ra, buf); err != nil || string(buf) != "back" {
		t.Fatalf("reverse direction after half-close: %q, %v", buf, err)
	}

	_ = ra.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = ra.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	ra.Close()
	if _, err := ra.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed conn: %v, want net.ErrClosed", err)
	}
	if _, err := ra.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed conn: %v, want net.ErrClosed", err)
	}
}

// TestRawConnPeerReset: a reset by the peer is an error, not a clean end.
func TestRawConnPeerReset(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawConn(a)
	_ = b.SetLinger(0)
	b.Close() // RST
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_, err := ra.Write(make([]byte, 1<<10))
		if err != nil {
			if errors.Is(err, net.ErrClosed) || err == io.EOF {
				t.Fatalf("write after a reset: %v, want the reset", err)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("writes kept succeeding after the peer reset the connection")
}

func TestNewRawConnLeavesOtherConnsAlone(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	if got := newRawConn(c1); got != c1 {
		t.Fatalf("newRawConn(net.Pipe) = %T, want the conn unchanged", got)
	}
}

// threadWrites is the number of write system calls the calling thread has made.
func threadWrites(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		t.Fatalf("this kernel counts no system calls per thread: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no syscw in /proc/thread-self/io:\n%s", b)
	return 0
}

// TestGatherWrites: a TLS write of a full DATA frame is four records or more; gathered, they
// leave in one write(2) and arrive whole and in order. The same write ungathered, on the same
// connection, takes a write per record, which is what the count tells apart.
func TestGatherWrites(t *testing.T) {
	a, b := tcpPair(t)
	for _, c := range []*net.TCPConn{a, b} {
		// Room for the whole frame, so that no write has to wait and be retried.
		_ = c.SetWriteBuffer(1 << 20)
		_ = c.SetReadBuffer(1 << 20)
	}
	ra := newRawConn(a).(*rawConn)
	ca := newTestCA(t, "gather.test")
	cert := ca.issue(t, ca.id("ns", "server"), time.Hour)
	client := tls.Client(ra, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	server := tls.Server(b, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}})
	herr := make(chan error, 1)
	go func() { herr <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-herr; err != nil {
		t.Fatal(err)
	}

	frame := make([]byte, 9+maxDataPayload)
	for i := range frame {
		frame[i] = byte(i * 13)
	}
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 2*len(frame))
		n, _ := io.ReadFull(server, buf)
		got <- buf[:n]
	}()

	// write system calls are counted per thread: stay on one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadWrites(t)
	if _, err := client.Write(frame); err != nil {
		t.Fatal(err)
	}
	plain := threadWrites(t) - before
	before = threadWrites(t)
	if err := ra.gatherWrites(func() error { _, err := client.Write(frame); return err }); err != nil {
		t.Fatal(err)
	}
	gathered := threadWrites(t) - before
	if plain < 4 || gathered != 1 {
		t.Fatalf("a %d-byte TLS write took %d write(2) calls plain and %d gathered; want at least 4 and 1", len(frame), plain, gathered)
	}
	if r := <-got; !bytes.Equal(r, append(frame[:len(frame):len(frame)], frame...)) {
		t.Fatalf("the peer read %d bytes, not the two frames written (%d bytes) in order", len(r), 2*len(frame))
	}
}
