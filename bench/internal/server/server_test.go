package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerSize(t *testing.T) {
	srv := httptest.NewServer(Handler(1024))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/x", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(b) != 1024 || resp.ContentLength != 1024 {
		t.Fatalf("%s, %d bytes, content-length %d", resp.Status, len(b), resp.ContentLength)
	}
}

// TestServeEcho: every connection gets back what it sends, many at once, and all end with
// the server's context.
func TestServeEcho(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ServeEcho(ctx, ln) }()
	var conns []net.Conn
	for i := range 50 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := fmt.Sprintf("conn %d", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("conn %d: %q, %v", i, buf, err)
		}
		conns = append(conns, c)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("conn %d after the server stopped: %v", i, err)
		}
	}
}
