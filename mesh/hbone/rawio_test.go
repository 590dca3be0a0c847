package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
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
