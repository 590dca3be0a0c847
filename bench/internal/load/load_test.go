package load

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/bench/internal/server"
)

func TestValidate(t *testing.T) {
	for _, c := range []Config{
		{Mode: "udp", Target: "x", Duration: time.Second, Connections: 1},
		{Mode: HTTP, Duration: time.Second, QPS: 1, Connections: 1},
		{Mode: HTTP, Target: "http://x/", Duration: time.Second, Connections: 1},
		{Mode: Churn, Target: "http://x/", Duration: time.Second},
		{Mode: Bulk, Target: "x:1"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// TestRunLoopback drives each mode against the benchmark's own server on loopback.
func TestRunLoopback(t *testing.T) {
	srv := httptest.NewServer(server.Handler(1024))
	defer srv.Close()
	ctx := t.Context()
	res, err := Run(ctx, Config{Mode: HTTP, Target: srv.URL + "/", QPS: 200, Connections: 2, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if l := res.Latency; l.Count < 80 || l.Errors != 0 || l.P50 <= 0 || l.P99 < l.P50 || l.QPS < 150 || l.QPS > 250 {
		t.Fatalf("http: %+v", res)
	}
	res, err = Run(ctx, Config{Mode: Churn, Target: srv.URL + "/", Connections: 2, Duration: 300 * time.Millisecond})
	if err != nil || res.ConnPerSec <= 0 || res.Latency.Errors != 0 {
		t.Fatalf("churn: %+v, %v", res, err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	res, err = Run(ctx, Config{Mode: Bulk, Target: ln.Addr().String(), Duration: 200 * time.Millisecond})
	if err != nil || res.Gbps <= 0 {
		t.Fatalf("bulk: %+v, %v", res, err)
	}
}

// echoServer is a real loopback echo server that counts the connections it holds open.
type echoServer struct {
	ln   net.Listener
	mu   sync.Mutex
	open int
	// closed receives one value each time a connection the server held ends.
	closed chan struct{}
	// silent, if set, closes every connection without echoing.
	silent bool
}

func newEchoServer(t *testing.T, silent bool) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, closed: make(chan struct{}, 1024), silent: silent}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if s.silent {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.open++
			s.mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					s.mu.Lock()
					s.open--
					s.mu.Unlock()
					s.closed <- struct{}{}
				}()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return s
}

func (s *echoServer) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// TestHold drives RunHold as the harness does, through its input and output lines, against
// a real loopback echo server: each level opens what was asked, the server holds as many,
// and they all close when the input ends.
func TestHold(t *testing.T) {
	srv := newEchoServer(t, false)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- RunHold(t.Context(), Config{Target: srv.ln.Addr().String(), Connections: 300, Duration: time.Minute}, inR, outW)
		outW.Close()
	}()
	out := bufio.NewScanner(outR)
	for _, n := range []int{1, 1, 100, 300} {
		if _, err := fmt.Fprintf(inW, "%d\n", n); err != nil {
			t.Fatal(err)
		}
		if !out.Scan() {
			t.Fatalf("no level for %d: %v", n, out.Err())
		}
		var lv Level
		if err := json.Unmarshal(out.Bytes(), &lv); err != nil {
			t.Fatal(err)
		}
		if lv.Want != n || lv.Held != n || lv.Errors != 0 || lv.FirstError != "" {
			t.Fatalf("level %d: %+v", n, lv)
		}
		// every connection reached the server and is held there: the echo came back
		// only after the server accepted it
		if got := srv.held(); got != n {
			t.Fatalf("the server holds %d connections, want %d", got, n)
		}
	}
	inW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for range 300 {
		<-srv.closed
	}
	if got := srv.held(); got != 0 {
		t.Fatalf("the server still holds %d connections", got)
	}
}

// TestHoldFailures: a server that never echoes, counts that go down or past the limit, and a
// holder whose caller never ends its input but which stops by itself.
func TestHoldFailures(t *testing.T) {
	silent := newEchoServer(t, true)
	in := strings.NewReader("5\n")
	var out bytes.Buffer
	if err := RunHold(t.Context(), Config{Target: silent.ln.Addr().String(), Connections: 10, Duration: time.Minute}, in, &out); err != nil {
		t.Fatal(err)
	}
	var lv Level
	if err := json.Unmarshal(out.Bytes(), &lv); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if lv.Want != 5 || lv.Held != 0 || lv.Errors == 0 || !strings.Contains(lv.FirstError, "echo") {
		t.Fatalf("against a server that does not echo: %+v", lv)
	}

	srv := newEchoServer(t, false)
	for _, input := range []string{"11\n", "3\n2\n", "x\n"} {
		out.Reset()
		err := RunHold(t.Context(), Config{Target: srv.ln.Addr().String(), Connections: 10, Duration: time.Minute}, strings.NewReader(input), &out)
		if err == nil {
			t.Errorf("input %q accepted: %s", input, out.String())
		}
	}
	for range 3 { // the 3 of "3\n2\n", closed
		<-srv.closed
	}

	// the input never ends: the holder gives up its connection by itself after Duration
	inR, inW := io.Pipe()
	defer inW.Close()
	go func() { _, _ = io.WriteString(inW, "1\n") }()
	if err := RunHold(t.Context(), Config{Target: srv.ln.Addr().String(), Connections: 1, Duration: 300 * time.Millisecond}, inR, io.Discard); err != nil {
		t.Fatal(err)
	}
	<-srv.closed
	if got := srv.held(); got != 0 {
		t.Fatalf("the server still holds %d connections", got)
	}

	if _, err := Run(t.Context(), Config{Mode: Hold, Target: "x:1", Connections: 1, Duration: time.Second}); err == nil {
		t.Error("Run took mode hold")
	}
	if err := (Config{Mode: Hold, Target: "x:1", Duration: time.Second}).Validate(); err == nil {
		t.Error("hold without a connection limit accepted")
	}
}
