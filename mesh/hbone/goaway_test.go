package hbone

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// A CONNECT the peer's GOAWAY names as unprocessed (its id above the GOAWAY's last stream)
// reached nobody: Dial sends it again on a new connection and the caller gets a tunnel, not
// an error. A ztunnel handing over its pods sends such a GOAWAY while clients open streams.
func TestDialRetriesStreamUnprocessedByGoAway(t *testing.T) {
	e := newEnv(t)
	first := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
		if calls.Add(1) == 1 {
			close(first)
			select { // the first CONNECT waits here, unanswered, until the test is done
			case <-release:
			case <-ctx.Done():
			}
			return
		}
		_ = Forward(ctx, r, dialTCP)
	})
	defer close(release)

	type result struct {
		st  *Stream
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		st, err := e.client.Dial(ctx, e.target())
		done <- result{st, err}
	}()
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("the first CONNECT never reached the server")
	}
	// The server's GOAWAY, as the client reads it: nothing processed.
	var cn *conn
	e.client.h2.mu.Lock()
	for _, kc := range e.client.h2.keys {
		cn = kc.conns[0]
	}
	e.client.h2.mu.Unlock()
	if cn == nil {
		t.Fatal("no pooled connection")
	}
	cn.onGoAway(&http2.GoAwayFrame{LastStreamID: 0, ErrCode: http2.ErrCodeNo})

	r := <-done
	if r.err != nil {
		t.Fatalf("Dial = %v, want a tunnel on a new connection", r.err)
	}
	defer r.st.Close()
	if _, err := r.st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(r.st, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}
