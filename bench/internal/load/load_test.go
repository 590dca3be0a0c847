package load

import (
	"net"
	"net/http/httptest"
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
