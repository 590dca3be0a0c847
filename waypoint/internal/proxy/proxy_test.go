package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/metricstest"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"net"
)

const webVIP = "10.96.0.10:80"

func routes(e *env, svc string, rs ...*configv1.Route) error {
	host := strings.TrimPrefix(svc, "shop/")
	return e.proxy.Apply(configv1.RouteConfigTypeURL, map[string]proto.Message{svc: &configv1.RouteConfig{
		Hostname: host, Namespace: "shop", Routes: rs,
	}}, nil)
}

func TestWeightedSplit(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	v1 := e.service("web-v1", "10.96.0.11")
	v2 := e.service("web-v2", "10.96.0.12")
	e.pod("web-v1", "10.244.0.21", v1, http.HandlerFunc(ok))
	e.pod("web-v2", "10.244.0.22", v2, http.HandlerFunc(ok))
	if err := routes(e, web, &configv1.Route{Name: "split", Backends: []*configv1.Backend{
		{Hostname: "web-v1.shop.svc.cluster.local", Port: 80, Weight: 90},
		{Hostname: "web-v2.shop.svc.cluster.local", Port: 80, Weight: 10},
	}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	const n = 2000
	counts := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n/8; i++ {
				resp, err := c.Get("http://web/")
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				counts[resp.Header.Get("X-Pod")]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	share := float64(counts["web-v1"]) / n * 100
	t.Logf("web-v1 %d, web-v2 %d (%.1f%%)", counts["web-v1"], counts["web-v2"], share)
	if counts["web-v1"]+counts["web-v2"] != n || share < 87 || share > 93 {
		t.Fatalf("split %v: web-v1 share %.1f%%, want 90±3", counts, share)
	}
}

func TestRetriesHideFlakyEndpoint(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	flaky := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rand.IntN(100) < 30 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		ok(w, r)
	}))
	e.pod("web-2", "10.244.0.12", web, http.HandlerFunc(ok))
	if err := routes(e, web, &configv1.Route{Name: "retry", Retry: &configv1.Retry{Codes: []uint32{503}, Attempts: 3, Backoff: durationpb.New(time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	const n = 2000
	good := 0
	for i := 0; i < n; i++ {
		code, _, _ := get(t, c, "GET", "http://web/")
		if code == 200 {
			good++
		}
	}
	t.Logf("%d/%d succeeded; the flaky pod served %d", good, n, flaky.Load())
	if float64(good)/n < 0.999 {
		t.Fatalf("success %d/%d, want ≥ 99.9%%", good, n)
	}
	if flaky.Load() == 0 {
		t.Fatal("the flaky pod was never tried")
	}
}

func TestRouteTimeout(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	if err := routes(e, web, &configv1.Route{Timeouts: &configv1.Timeouts{Request: durationpb.New(300 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	start := time.Now()
	code, body, _ := get(t, c, "GET", "http://web/hang")
	took := time.Since(start)
	if code != http.StatusGatewayTimeout || took > 2*time.Second || took < 250*time.Millisecond {
		t.Fatalf("got %d %q after %s, want 504 after ~300ms", code, body, took)
	}
}

func TestL7Authorization(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	var admin, public int
	var mu sync.Mutex
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if strings.HasPrefix(r.URL.Path, "/admin") {
			admin++
		} else {
			public++
		}
		mu.Unlock()
		ok(w, r)
	}))
	e.apply(configv1.AuthorizationTypeURL, map[string]proto.Message{"shop/web-l7": &configv1.Authorization{
		Name: "web-l7", Namespace: "shop", Action: configv1.Authorization_ALLOW,
		TargetRefs: []*configv1.TargetRef{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"}},
		Rules: []*configv1.Rule{
			{To: []*configv1.Operation{{Methods: []string{"GET"}, Paths: []string{"/public*"}}}},
			{From: []*configv1.Source{{Principals: []string{"cluster.local/ns/shop/sa/admin"}}}, To: []*configv1.Operation{{Methods: []string{"POST"}, Paths: []string{"/admin"}}}},
		},
	}})
	other := e.httpClient(sa("other"), webVIP, false)
	if code, _, _ := get(t, other, "GET", "http://web/public"); code != 200 {
		t.Fatalf("GET /public: %d, want 200", code)
	}
	for _, p := range []string{"/admin", "/public/../admin", "/%61dmin"} {
		code, body, _ := get(t, other, "POST", "http://web"+p)
		if code != http.StatusForbidden || !strings.Contains(body, "access denied") {
			t.Fatalf("POST %s from the wrong SA: %d %q, want 403 access denied", p, code, body)
		}
	}
	if code, _, _ := get(t, e.httpClient(sa("admin"), webVIP, false), "POST", "http://web/admin"); code != 200 {
		t.Fatalf("POST /admin from the admin SA: %d, want 200", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if admin != 1 || public != 1 {
		t.Fatalf("backend saw %d /admin and %d /public requests, want 1 and 1", admin, public)
	}
	// The request metric is recorded once the answer is written, after the client has it.
	wait.Until(t, 5*time.Second, "the denied requests counted", func() error {
		if n := counter(t, e, "istio_requests_total", map[string]string{
			"reporter": "waypoint", "response_code": "403", "response_flags": flagDenied,
			"source_principal": "spiffe://cluster.local/ns/shop/sa/other", "destination_service": "web.shop.svc.cluster.local",
		}); n != 3 {
			return fmt.Errorf("istio_requests_total for the denied requests = %v, want 3", n)
		}
		return nil
	})
}

// TestRequestMetricsFollowEachRequest: requests on one keep-alive connection that end
// differently (another endpoint, another code) each count in their own series, though a
// connection reuses the series of its last request (Metrics.series).
func TestRequestMetricsFollowEachRequest(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		ok(w, r)
	})
	e.pod("web-1", "10.244.0.11", web, h)
	e.pod("web-2", "10.244.0.12", web, h)
	// Round robin: both pods answer both paths, whatever the random ties of least-request
	// would have picked.
	pol := &configv1.TrafficPolicy{LoadBalancer: &configv1.TrafficPolicy_LoadBalancer{Simple: configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN}}
	if err := routes(e, web, &configv1.Route{Name: "r", Backends: toWeb(pol)}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	type outcome struct {
		pod  string
		code int
	}
	want := map[outcome]float64{}
	for i := range 12 {
		path := "/ok"
		if i%3 == 2 {
			path = "/missing"
		}
		code, _, hdr := get(t, c, "GET", "http://web"+path)
		want[outcome{hdr.Get("X-Pod"), code}]++
	}
	if len(want) < 3 {
		t.Fatalf("outcomes %v: want both pods and both codes among them", want)
	}
	// The request metric is recorded once the answer is written, after the client has it.
	wait.Until(t, 5*time.Second, "each request counted in its own series", func() error {
		var errs []error
		for o, n := range want {
			got := counter(t, e, "istio_requests_total", map[string]string{
				"destination_principal": "spiffe://cluster.local/ns/shop/sa/" + o.pod, "response_code": strconv.Itoa(o.code),
				"source_principal": "spiffe://cluster.local/ns/shop/sa/client",
			})
			if got != n {
				errs = append(errs, fmt.Errorf("istio_requests_total for %s answering %d = %v, want %v (all: %v)", o.pod, o.code, got, n, want))
			}
		}
		return errors.Join(errs...)
	})
}

// TestAccessLog: with an access log enabled at info, each request leaves one record with
// its status and client identity; with one that is not (cmd/waypoint's default, no
// --access-log), none.
func TestAccessLog(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("on=%v", on), func(t *testing.T) {
			var out syncBuffer
			level := slog.LevelInfo
			if !on {
				level = slog.LevelWarn
			}
			e := newEnv(t, func(c *Config) {
				c.AccessLog = slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: level}))
			})
			web := e.service("web", "10.96.0.10")
			e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
			c := e.httpClient(sa("client"), webVIP, false)
			for range 2 {
				if code, _, _ := get(t, c, "GET", "http://web/logged"); code != 200 {
					t.Fatalf("GET: %d", code)
				}
			}
			// The record is written after the response, so wait for it (or not).
			deadline := time.Now().Add(5 * time.Second)
			for on && strings.Count(out.String(), `"msg":"request"`) < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !on {
				time.Sleep(200 * time.Millisecond)
			}
			got := out.String()
			if !on {
				if got != "" {
					t.Fatalf("access log not enabled, yet it has %q", got)
				}
				return
			}
			if n := strings.Count(got, `"msg":"request"`); n != 2 || !strings.Contains(got, `"status":200`) ||
				!strings.Contains(got, `"path":"/logged"`) || !strings.Contains(got, `"src_principal":"spiffe://cluster.local/ns/shop/sa/client"`) {
				t.Fatalf("access log: %d records, want 2 with status, path and client identity:\n%s", n, got)
			}
		})
	}
}

func TestHTTP2AndTrailers(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		fmt.Fprintf(w, "proto %s\n", r.Proto)
		w.Header().Set("X-Checksum", "abc")
	}))
	c := e.httpClient(sa("client"), webVIP, true)
	resp, err := c.Get("http://web/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "proto HTTP/2.0" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("got %d %q trailer %v", resp.StatusCode, body, resp.Trailer)
	}
}

func TestGRPC(t *testing.T) {
	e := newEnv(t)
	web := e.service("grpc", "10.96.0.10")
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("shop.Echo", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	e.podListener("grpc-1", "10.244.0.11", web, ln.Addr().String())

	conn, err := grpc.NewClient("passthrough:///grpc", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.dial(ctx, sa("client"), webVIP) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(conn)
	res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "shop.Echo"})
	if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", res, err)
	}
	// A gRPC error travels in the trailers; it must arrive intact.
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Check(nope): %v, want NotFound", err)
	}
	// A server stream, answered message by message.
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "shop.Echo"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch: %v %v", m, err)
	}
	hs.SetServingStatus("shop.Echo", healthpb.HealthCheckResponse_NOT_SERVING)
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch update: %v %v", m, err)
	}
}

func TestSmugglingRefused(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	seen := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	big := "GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n"
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n", 400},
		{"two Content-Lengths", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"obfuscated TE", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501},
		{"space before colon", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length : 5\r\n\r\nhello", 400},
		{"bare LF", "GET / HTTP/1.1\nHost: web\r\n\r\n", 400},
		{"folded header", "GET / HTTP/1.1\r\nHost: web\r\nX-A: b\r\n c\r\n\r\n", 400},
		{"data after CONNECT", "CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"oversized head", big, 431},
		{"malformed request line", "GET /\r\nHost: web\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.mustDial(t, webVIP)
			go func() { _, _ = io.WriteString(c, tc.req) }()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			rest, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, rest, tc.want)
			}
			// The connection ends after the refusal: nothing smuggled behind it is answered.
			if more, _ := io.ReadAll(c); len(more) > 0 {
				t.Fatalf("more after the refusal: %q", more)
			}
		})
	}
	if n := seen.Load(); n != 0 {
		t.Fatalf("the backend saw %d requests, want none", n)
	}
}

// A head longer than the connection's read buffer (4 KiB) but within MaxHeaderBytes is
// forwarded whole, and the connection goes on to its next request.
func TestLongHeadForwarded(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %d", r.URL.Path, len(r.Header.Get("X-Big")))
	}))
	c := e.mustDial(t, webVIP)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i, size := range []int{20 << 10, 10, 30 << 10, 0} {
		req := fmt.Sprintf("GET /%d HTTP/1.1\r\nHost: web\r\nX-Big: %s\r\n\r\n", i, strings.Repeat("a", size))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d (%d-byte header): %v", i, size, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("/%d %d", i, size); resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, resp.StatusCode, body, want)
		}
	}
}

func TestMissingServiceAnswers503Fast(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	if err := routes(e, web, &configv1.Route{Backends: []*configv1.Backend{{Hostname: "gone.shop.svc.cluster.local", Port: 80, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	start := time.Now()
	code, body, _ := get(t, c, "GET", "http://web/")
	if code != 503 || !strings.Contains(body, "gone.shop.svc.cluster.local does not exist") || time.Since(start) > time.Second {
		t.Fatalf("got %d %q after %s", code, body, time.Since(start))
	}
	// A Service without endpoints is as clear.
	e.service("empty", "10.96.0.13")
	if err := routes(e, web, &configv1.Route{Backends: []*configv1.Backend{{Hostname: "empty.shop.svc.cluster.local", Port: 80, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := get(t, c, "GET", "http://web/"); code != 503 || !strings.Contains(body, "no endpoint") {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestInvalidRouteConfigRejected(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	for _, tc := range []struct {
		route *configv1.Route
		field string
	}{
		{&configv1.Route{Backends: []*configv1.Backend{{Hostname: "a.shop.svc.cluster.local", Weight: 2_000_000}}}, "routes[0].backends[0].weight"},
		{&configv1.Route{Backends: []*configv1.Backend{{Weight: 1}}}, "routes[0].backends[0].hostname"},
		{&configv1.Route{Retry: &configv1.Retry{Attempts: 50}}, "routes[0].retry.attempts"},
		{&configv1.Route{Retry: &configv1.Retry{Attempts: 2, Codes: []uint32{503, 200}}}, "routes[0].retry.codes[1]"},
		{&configv1.Route{Retry: &configv1.Retry{Attempts: 2, Backoff: durationpb.New(-time.Second)}}, "routes[0].retry.backoff"},
		{&configv1.Route{Timeouts: &configv1.Timeouts{Request: durationpb.New(time.Second), BackendRequest: durationpb.New(2 * time.Second)}}, "routes[0].timeouts.backend_request"},
		{&configv1.Route{Fault: &configv1.Fault{Abort: &configv1.Fault_Abort{Percentage: 150, Status: 503}}}, "routes[0].fault.abort.percentage"},
		{&configv1.Route{Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "api"}}}}}, "routes[0].matches[0].path"},
	} {
		err := routes(e, web, tc.route)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%v: error %v, want one naming %s", tc.route, err, tc.field)
		}
	}
	if len(e.proxy.Routes()) != 0 {
		t.Fatalf("a rejected config was installed: %v", e.proxy.Routes())
	}
}

func TestOutlierEjection(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Consecutive5xx = 3; c.EjectionTime = time.Minute })
	web := e.service("web", "10.96.0.10")
	bad := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	e.pod("web-2", "10.244.0.12", web, http.HandlerFunc(ok))
	c := e.httpClient(sa("client"), webVIP, false)
	for i := 0; i < 60; i++ {
		get(t, c, "GET", "http://web/")
	}
	if !e.proxy.lb.ejected(netip.MustParseAddrPort("10.244.0.21:8080")) && !e.proxy.lb.ejected(netip.MustParseAddrPort("10.244.0.11:8080")) {
		t.Fatal("the failing endpoint was not ejected")
	}
	before := bad.Load()
	for i := 0; i < 40; i++ {
		if code, _, _ := get(t, c, "GET", "http://web/"); code != 200 {
			t.Fatalf("request %d after ejection: %d", i, code)
		}
	}
	if bad.Load() != before || before > 5 {
		t.Fatalf("the ejected endpoint served %d requests before and %d after ejection", before, bad.Load()-before)
	}
}

func TestFaultAbort(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	seen := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	if err := routes(e, web, &configv1.Route{Fault: &configv1.Fault{Abort: &configv1.Fault_Abort{Percentage: 100, Status: 418}}}); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := get(t, e.httpClient(sa("client"), webVIP, false), "GET", "http://web/"); code != 418 || seen.Load() != 0 {
		t.Fatalf("got %d, backend saw %d", code, seen.Load())
	}
}

func TestTCPPassThrough(t *testing.T) {
	e := newEnv(t)
	web := e.service("echo", "10.96.0.10")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Each read comes back twice, so that the byte counts tell the directions apart.
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(append(buf[:n:n], buf[:n]...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	e.podListener("echo-1", "10.244.0.11", web, ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.dial(ctx, sa("client"), webVIP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := "\x00\x01binary, not HTTP"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2*len(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg+msg {
		t.Fatalf("echo %q %v", buf, err)
	}
	c.Close()
	// Counted as Istio counts them: received is the request, sent the response.
	wait.Until(t, 5*time.Second, "the byte counts of the closed connection", func() error {
		l := map[string]string{"reporter": "waypoint"}
		sent, received := metricstest.Sum(e.reg, "istio_tcp_sent_bytes_total", l), metricstest.Sum(e.reg, "istio_tcp_received_bytes_total", l)
		if received != float64(len(msg)) || sent != float64(2*len(msg)) {
			return fmt.Errorf("received %v and sent %v bytes, want %d and %d", received, sent, len(msg), 2*len(msg))
		}
		return nil
	})
}

func TestTraceparentPropagated(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	got := make(chan string, 1)
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Traceparent") + " | " + r.Header.Get("Forwarded") + " | " + r.Header.Get("X-Forwarded-For")
		ok(w, r)
	}))
	req, _ := http.NewRequest("GET", "http://web/", nil)
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	resp, err := e.httpClient(sa("client"), webVIP, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-got
	if !strings.HasPrefix(h, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || strings.Contains(h, "00f067aa0ba902b7") || !strings.Contains(h, `for="10.1.0.5:40000"`) ||
		!strings.HasSuffix(h, " | 192.0.2.1, 10.1.0.5") {
		t.Fatalf("backend saw %q", h)
	}
	// The span ends once the response is written, just after the client has it.
	spans := e.spans.GetSpans()
	wait.Until(t, 2*time.Second, "the request's span", func() error {
		if spans = e.spans.GetSpans(); len(spans) == 0 {
			return errors.New("no span ended")
		}
		return nil
	})
	if len(spans) != 1 || spans[0].SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || spans[0].Parent.SpanID().String() != "00f067aa0ba902b7" {
		t.Fatalf("spans %+v", spans)
	}
}

func TestAuthorityNotBoundRefused(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.dial(ctx, sa("client"), "10.96.9.9:80"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("dial to an unknown authority: %v, want 400", err)
	}
}

// The waypoint's own pod bound to itself (a namespace-wide use-waypoint label that also
// covers the waypoint's pods) is refused as a destination, for every port.
func TestSelfCallRefused(t *testing.T) {
	e := newEnv(t)
	self := &configv1.Workload{
		Uid: "wp", Name: "waypoint-0", Namespace: "shop", ServiceAccount: "waypoint", TrustDomain: "cluster.local",
		Addresses: [][]byte{e.wpAddr.Addr().AsSlice()}, TunnelProtocol: configv1.TunnelProtocol_HBONE, Waypoint: e.gateway(),
	}
	e.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/waypoint-0": self})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, port := range []uint16{e.wpAddr.Port(), 15008, 15021, 8080} {
		authority := netip.AddrPortFrom(e.wpAddr.Addr(), port).String()
		_, err := e.dial(ctx, sa("client"), authority)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "self call refused") {
			t.Fatalf("dial to the waypoint's own %s: %v, want 400 naming the self call", authority, err)
		}
	}
}

// counter sums the samples of a metric whose labels include want.
func counter(t *testing.T, e *env, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func TestRetryReplaysBody(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	// Read first: net/http's HTTP/1 server closes the request body once the answer starts.
	echo := func(w http.ResponseWriter, r *http.Request) { b, _ := io.ReadAll(r.Body); _, _ = w.Write(b) }
	failed := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	e.pod("web-2", "10.244.0.12", web, http.HandlerFunc(echo))
	if err := routes(e, web, &configv1.Route{Retry: &configv1.Retry{Codes: []uint32{503}, Attempts: 2, Backoff: durationpb.New(time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	body := strings.Repeat("0123456789", 1000)
	for i := 0; i < 20; i++ {
		resp, err := c.Post("http://web/echo", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != body {
			t.Fatalf("request %d: %d, %d bytes back", i, resp.StatusCode, len(got))
		}
	}
	if failed.Load() == 0 {
		t.Fatal("no request was retried")
	}
}

func TestHTTP1ClientToH2Backend(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	svc, _ := e.state.ServiceByName(web)
	svc = proto.Clone(svc).(*configv1.Service)
	svc.Ports[0].AppProtocol = configv1.AppProtocol_HTTP2
	e.apply(configv1.ServiceTypeURL, map[string]proto.Message{web: svc})
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s", r.Proto)
	}))
	if code, body, _ := get(t, e.httpClient(sa("client"), webVIP, false), "GET", "http://web/"); code != 200 || body != "HTTP/2.0" {
		t.Fatalf("got %d %q, want the backend to see HTTP/2.0", code, body)
	}
}
