package proxy

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
	"go.opentelemetry.io/otel/trace/noop"
)

// BenchmarkRequest1KB sends 1 KB requests that get 1 KB answers through the waypoint over
// HTTP/1.1 with keep-alive: the client, the waypoint and the backend's fake ztunnel all run
// in this process, so ns/op and allocs/op are the whole path's, of which the waypoint's
// pipeline is one part.
func BenchmarkRequest1KB(b *testing.B) {
	// No exporter, as cmd/waypoint runs without --otlp-endpoint.
	e := newEnv(b, func(c *Config) { c.Tracer = noop.NewTracerProvider() })
	web := e.service("web", "10.96.0.10")
	payload := bytes.Repeat([]byte("x"), 1024)
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write(payload)
	}))
	c := e.httpClient(sa("client"), webVIP, false)
	b.ReportAllocs()
	b.SetBytes(2048)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Post("http://web/", "application/octet-stream", bytes.NewReader(payload))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// BenchmarkPick is the balancer's cost per request among 16 endpoints, by policy (the pick
// and its release; no network).
func BenchmarkPick(b *testing.B) {
	eps := endpoints(16)
	for _, bc := range []struct {
		name string
		pr   pickReq
	}{
		{"least-request", pickReq{}},
		{"round-robin", pickReq{pol: &route.Policy{LB: configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN}, rr: new(uint64)}},
		{"random", pickReq{pol: &route.Policy{LB: configv1.TrafficPolicy_LoadBalancer_RANDOM}}},
		{"consistent-hash", pickReq{hashKey: "user-12345", hasKey: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			lb := newBalancer(5, time.Second, 10, time.Now)
			b.ReportAllocs()
			for b.Loop() {
				e := lb.pick(eps, nil, bc.pr)
				lb.release(e.addr)
			}
		})
	}
}
