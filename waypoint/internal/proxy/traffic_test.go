package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/state"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The traffic policy tests: what a DestinationRule's trafficPolicy and a VirtualService's
// retries, headers, rewrite, redirect and mirrors do at the waypoint.

const webHost = "web.shop.svc.cluster.local"

func toWeb(pol *configv1.TrafficPolicy) []*configv1.Backend {
	return []*configv1.Backend{{Hostname: webHost, Port: 80, Weight: 1, Policy: pol}}
}

// reset is a handler whose connection ends before any response.
func reset(w http.ResponseWriter, _ *http.Request) {
	c, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		c.Close()
	}
}

func TestRetryOnConditions(t *testing.T) {
	for _, tt := range []struct {
		on       []string
		allGood  bool
		describe string
	}{
		{[]string{"reset"}, true, "resets retried"},
		{[]string{"connect-failure"}, false, "resets not retried"},
	} {
		t.Run(tt.describe, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Consecutive5xx = 1000 })
			web := e.service("web", "10.96.0.10")
			e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(reset))
			e.pod("web-2", "10.244.0.12", web, http.HandlerFunc(ok))
			if err := routes(e, web, &configv1.Route{Name: "r", Retry: &configv1.Retry{Attempts: 3, On: tt.on, Backoff: durationpb.New(time.Millisecond)}}); err != nil {
				t.Fatal(err)
			}
			c := e.httpClient(sa("client"), webVIP, false)
			bad, last := 0, ""
			for i := 0; i < 60; i++ {
				if code, body, _ := get(t, c, "GET", "http://web/"); code != 200 {
					bad, last = bad+1, body
				}
			}
			t.Logf("retry on %v: %d of 60 failed (%s)", tt.on, bad, strings.TrimSpace(last))
			if tt.allGood != (bad == 0) {
				t.Fatalf("retry on %v: %d of 60 requests failed", tt.on, bad)
			}
		})
	}
}

func TestRetryBudget(t *testing.T) {
	run := func(t *testing.T, budget *configv1.TrafficPolicy_RetryBudget) (served int64, overflow float64) {
		e := newEnv(t, func(c *Config) { c.Consecutive5xx = 1000 })
		web := e.service("web", "10.96.0.10")
		hits := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			time.Sleep(50 * time.Millisecond)
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		if err := routes(e, web, &configv1.Route{Name: "r", Backends: toWeb(&configv1.TrafficPolicy{RetryBudget: budget}),
			Retry: &configv1.Retry{Codes: []uint32{503}, Attempts: 3, Backoff: durationpb.New(time.Millisecond)}}); err != nil {
			t.Fatal(err)
		}
		c := e.httpClient(sa("client"), webVIP, false)
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code, _, _ := get(t, c, "GET", "http://web/"); code != 503 {
					t.Errorf("status %d, want 503", code)
				}
			}()
		}
		wg.Wait()
		return hits.Load(), counter(t, e, "ambit_waypoint_upstream_overflow_total", map[string]string{"reason": "retry_budget", "destination_service": webHost})
	}
	var all, limited int64
	var none, overflow float64
	t.Run("no budget", func(t *testing.T) { all, none = run(t, nil) })
	// 10% of 20 requests in flight: 2 retries at a time.
	t.Run("budget", func(t *testing.T) {
		limited, overflow = run(t, &configv1.TrafficPolicy_RetryBudget{Percent: 10, MinRetryConcurrency: 1})
	})
	t.Logf("20 requests, 3 retries each: %d attempts without a budget, %d with (%v retries refused)", all, limited, overflow)
	if all != 80 || none != 0 {
		t.Fatalf("without a budget: %d attempts (want 80), %v refused", all, none)
	}
	if limited >= 60 || overflow == 0 {
		t.Fatalf("with a 10%% budget: %d attempts, %v retries refused", limited, overflow)
	}
}

func TestConnectionPoolOverflow(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	unblock := make(chan struct{})
	var inApp atomic.Int32
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inApp.Add(1)
		<-unblock
		ok(w, r)
	}))
	pol := &configv1.TrafficPolicy{ConnectionPool: &configv1.TrafficPolicy_ConnectionPool{MaxConnections: 1, MaxPendingRequests: 1}}
	if err := routes(e, web, &configv1.Route{Name: "r", Backends: toWeb(pol)}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	codes := make(chan int, 2)
	for i := 0; i < 2; i++ { // one in flight, one pending
		go func() {
			code, _, _ := get(t, c, "GET", "http://web/")
			codes <- code
		}()
	}
	wait.Until(t, 5*time.Second, "one request in the app, one pending", func() error {
		d := e.proxy.dests.get("shop/" + webHost + "|80|")
		d.mu.Lock()
		defer d.mu.Unlock()
		if inApp.Load() != 1 || d.active != 1 || len(d.waiters) != 1 {
			return fmt.Errorf("in app %d, active %d, waiting %d", inApp.Load(), d.active, len(d.waiters))
		}
		return nil
	})
	start := time.Now()
	code, body, hdr := get(t, c, "GET", "http://web/")
	if code != 503 || !strings.Contains(body, "overflow") || time.Since(start) > time.Second {
		t.Fatalf("third request: %d %q %v after %v; want an immediate 503 overflow", code, body, hdr, time.Since(start))
	}
	if n := counter(t, e, "ambit_waypoint_upstream_overflow_total", map[string]string{"reason": "pending"}); n != 1 {
		t.Fatalf("overflow metric %v, want 1", n)
	}
	// The request metric is recorded once the answer is written, after the client has it.
	wait.Until(t, 5*time.Second, "the request counted with flag UO", func() error {
		if n := counter(t, e, "istio_requests_total", map[string]string{"response_flags": "UO"}); n != 1 {
			return fmt.Errorf("requests with flag UO: %v, want 1", n)
		}
		return nil
	})
	close(unblock)
	for i := 0; i < 2; i++ {
		if code := <-codes; code != 200 {
			t.Fatalf("in-flight or pending request: %d", code)
		}
	}
}

// fakeClock is a settable clock for the balancer.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func endpoints(n int) []state.Endpoint {
	eps := make([]state.Endpoint, n)
	for i := range eps {
		eps[i] = state.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080), Workload: &configv1.Workload{Name: fmt.Sprint("w", i)}}
	}
	return eps
}

func TestCircuitBreaker(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	b := newBalancer(5, 30*time.Second, 10, clk.Now)
	pol := &route.Policy{Consecutive5xx: 3, BaseEjection: 10 * time.Second, MaxEjectionPercent: 100}
	eps := endpoints(2)
	bad := eps[0].Addr
	fail := func(a netip.AddrPort, status int) bool {
		b.pick([]state.Endpoint{{Addr: a}}, nil, pickReq{})
		b.release(a)
		return b.result(a, status, eps, pol)
	}
	if fail(bad, 500) || fail(bad, 503) {
		t.Fatal("ejected before 3 consecutive 5xx")
	}
	if !fail(bad, 0) || !b.ejected(bad) {
		t.Fatal("not ejected after 3 consecutive failures")
	}
	pickN := func(n int) map[netip.AddrPort]int {
		got := map[netip.AddrPort]int{}
		for i := 0; i < n; i++ {
			got[b.pick(eps, nil, pickReq{pol: pol}).addr]++
		}
		return got
	}
	if got := pickN(50); got[bad] != 0 {
		t.Fatalf("ejected endpoint picked %d times", got[bad])
	}
	clk.Add(10 * time.Second)
	// good now has 50 requests in flight, so least-request prefers bad: it gets exactly one
	// trial, however many requests come while the trial is in flight.
	if got := pickN(20); got[bad] != 1 {
		t.Fatalf("after the ejection: the endpoint got %d requests while on trial, want exactly 1", got[bad])
	}
	// The trial fails: ejected again at once, for twice as long.
	b.release(bad)
	if !b.result(bad, 502, eps, pol) || !b.ejected(bad) {
		t.Fatal("a failed trial did not eject the endpoint again")
	}
	clk.Add(15 * time.Second)
	if !b.ejected(bad) {
		t.Fatal("the second ejection did not last 2 × baseEjectionTime")
	}
	clk.Add(5 * time.Second)
	if got := pickN(20); got[bad] != 1 {
		t.Fatalf("second trial: %d requests, want 1", got[bad])
	}
	b.release(bad)
	if b.result(bad, 200, eps, pol) {
		t.Fatal("a successful trial ejected")
	}
	if got := pickN(20); got[bad] < 10 {
		t.Fatalf("after a successful trial the endpoint got %d of 20 requests; want it back in rotation", got[bad])
	}

	// maxEjectionPercent 50 of 4 endpoints: at most 2 ejected however many fail.
	b = newBalancer(5, 30*time.Second, 10, clk.Now)
	pol = &route.Policy{Consecutive5xx: 1, BaseEjection: time.Minute, MaxEjectionPercent: 50}
	eps = endpoints(4)
	ejected := 0
	for _, e := range eps {
		b.pick([]state.Endpoint{e}, nil, pickReq{})
		b.release(e.Addr)
		if b.result(e.Addr, 500, eps, pol) {
			ejected++
		}
	}
	if ejected != 2 {
		t.Fatalf("%d of 4 endpoints ejected with maxEjectionPercent 50", ejected)
	}
}

func TestConsistentHash(t *testing.T) {
	b := newBalancer(5, time.Second, 10, time.Now)
	eps := endpoints(4)
	const keys = 10000
	owner := func(eps []state.Endpoint) map[string]netip.AddrPort {
		m := map[string]netip.AddrPort{}
		for i := 0; i < keys; i++ {
			k := fmt.Sprint("user-", i)
			a := b.pick(eps, nil, pickReq{hashKey: k, hasKey: true}).addr
			b.release(a)
			m[k] = a
		}
		return m
	}
	before := owner(eps)
	share := map[netip.AddrPort]int{}
	for _, a := range before {
		share[a]++
	}
	for a, n := range share {
		if n < keys/4*8/10 || n > keys/4*12/10 {
			t.Fatalf("endpoint %v holds %d of %d keys; want about a quarter (%v)", a, n, keys, share)
		}
	}
	if again := owner(eps); fmt.Sprint(again) != fmt.Sprint(before) {
		t.Fatal("the same keys moved with the same endpoints")
	}
	after := owner(append(eps[:1:1], eps[2:]...)) // endpoint 1 removed
	moved := 0
	for k, a := range after {
		if before[k] != a {
			moved++
			if before[k] != eps[1].Addr {
				t.Fatalf("key %s moved from %v, which is still there", k, before[k])
			}
		}
	}
	frac := float64(moved) / keys
	t.Logf("removing 1 of 4 endpoints moved %.1f%% of %d keys", frac*100, keys)
	if frac > 0.30 {
		t.Fatalf("removing 1 of 4 endpoints moved %.1f%% of the keys, want ≤ 30%%", frac*100)
	}
}

func TestLoadBalancerModes(t *testing.T) {
	b := newBalancer(5, time.Second, 10, time.Now)
	eps := endpoints(3)
	var rr uint64
	var seq []string
	for i := 0; i < 6; i++ {
		e := b.pick(eps, nil, pickReq{pol: &route.Policy{LB: configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN}, rr: &rr})
		seq = append(seq, e.wl.GetName())
		// Leave it in flight: round robin ignores load, least-request would not.
	}
	if got := strings.Join(seq, ","); got != "w0,w1,w2,w0,w1,w2" {
		t.Fatalf("round robin picked %s", got)
	}
	n := map[string]int{}
	for i := 0; i < 3000; i++ {
		n[b.pick(eps, nil, pickReq{pol: &route.Policy{LB: configv1.TrafficPolicy_LoadBalancer_RANDOM}}).wl.GetName()]++
	}
	for _, w := range []string{"w0", "w1", "w2"} {
		if n[w] < 800 || n[w] > 1200 {
			t.Fatalf("random: %v", n)
		}
	}
	b = newBalancer(5, time.Second, 10, time.Now)
	b.pick(eps[:1], nil, pickReq{})
	b.pick(eps[1:2], nil, pickReq{})
	if e := b.pick(eps, nil, pickReq{pol: &route.Policy{LB: configv1.TrafficPolicy_LoadBalancer_LEAST_REQUEST}}); e.wl.GetName() != "w2" {
		t.Fatalf("least request picked %s, the idle one is w2", e.wl.GetName())
	}
}

func TestConsistentHashThroughWaypoint(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	for i := 1; i <= 4; i++ {
		e.pod(fmt.Sprint("web-", i), fmt.Sprint("10.244.0.1", i), web, http.HandlerFunc(ok))
	}
	pol := &configv1.TrafficPolicy{LoadBalancer: &configv1.TrafficPolicy_LoadBalancer{HashHeader: "x-user"}}
	if err := routes(e, web, &configv1.Route{Name: "r", Backends: toWeb(pol)}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	for u := 0; u < 5; u++ {
		pods := map[string]bool{}
		for i := 0; i < 10; i++ {
			req, _ := http.NewRequest("GET", "http://web/", nil)
			req.Header.Set("X-User", fmt.Sprint("user-", u))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			pods[resp.Header.Get("X-Pod")] = true
		}
		if len(pods) != 1 {
			t.Fatalf("user-%d went to %v; want one pod", u, pods)
		}
	}
}

func TestHeadersRewriteRedirect(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s|%s|%s", r.Host, r.URL.Path, r.Header.Get("X-Set"), r.Header.Values("X-Add"), r.Header.Get("X-Drop"))
		w.Header().Set("X-Internal", "secret")
	}))
	err := routes(e, web,
		&configv1.Route{Name: "moved", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/old-page"}}}},
			Redirect: &configv1.Redirect{Path: "/new-page", Authority: "www.example.com", Scheme: "https", Code: 308}},
		&configv1.Route{Name: "api", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: "/v1/"}}}},
			Rewrite:         &configv1.Rewrite{Path: "/api/", Authority: "api.internal"},
			RequestHeaders:  &configv1.HeaderOps{Set: map[string]string{"x-set": "yes"}, Add: map[string]string{"x-add": "two"}, Remove: []string{"x-drop"}},
			ResponseHeaders: &configv1.HeaderOps{Remove: []string{"x-internal"}, Set: map[string]string{"x-served-by": "waypoint"}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	code, _, h := get(t, c, "GET", "http://web/old-page?q=1")
	if code != 308 || h.Get("Location") != "https://www.example.com/new-page?q=1" {
		t.Fatalf("redirect: %d Location %q", code, h.Get("Location"))
	}
	req, _ := http.NewRequest("GET", "http://web/v1/users", nil)
	req.Header.Set("X-Add", "one")
	req.Header.Set("X-Drop", "gone?")
	req.Header.Set("X-Set", "no")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got, want := string(b), "api.internal /api/users yes|[one two]|"; got != want {
		t.Fatalf("the app saw %q, want %q", got, want)
	}
	if resp.Header.Get("X-Internal") != "" || resp.Header.Get("X-Served-By") != "waypoint" {
		t.Fatalf("response headers %v", resp.Header)
	}
}

func TestMirror(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	shadow := e.service("web-shadow", "10.96.0.11")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	var mu sync.Mutex
	var hosts []string
	var bodies []string
	release := make(chan struct{})
	e.pod("shadow-1", "10.244.0.12", shadow, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		hosts, bodies = append(hosts, r.Host), append(bodies, string(b))
		mu.Unlock()
		<-release // a mirror that never answers in time must not slow the request
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer close(release)
	if err := routes(e, web, &configv1.Route{Name: "r", Mirrors: []*configv1.Mirror{{Hostname: "web-shadow.shop.svc.cluster.local", Percentage: 100}}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	start := time.Now()
	for i := 0; i < 5; i++ {
		resp, err := c.Post("http://web/orders", "text/plain", strings.NewReader(fmt.Sprint("order-", i)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("5 requests took %v with a mirror that does not answer", d)
	}
	wait.Until(t, 5*time.Second, "5 copies at the mirror", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(hosts) != 5 {
			return fmt.Errorf("mirror saw %d requests", len(hosts))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if hosts[0] != "web-shadow" || !strings.HasPrefix(bodies[0], "order-") {
		t.Fatalf("mirror saw host %q body %q; want web-shadow and the request's body", hosts[0], bodies[0])
	}
}

func TestRetryGRPCStatus(t *testing.T) {
	for _, codes := range [][]uint32{{14}, nil} {
		t.Run(fmt.Sprint(codes), func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Consecutive5xx = 1000 })
			web := e.service("web", "10.96.0.10")
			e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/grpc")
				w.Header().Set("Grpc-Status", "14") // trailers-only UNAVAILABLE
			}))
			e.pod("web-2", "10.244.0.12", web, http.HandlerFunc(ok))
			if err := routes(e, web, &configv1.Route{Name: "r", Retry: &configv1.Retry{Attempts: 2, GrpcCodes: codes, Backoff: durationpb.New(time.Millisecond)}}); err != nil {
				t.Fatal(err)
			}
			c := e.httpClient(sa("client"), webVIP, false)
			unavailable := 0
			for i := 0; i < 40; i++ {
				if _, _, h := get(t, c, "GET", "http://web/"); h.Get("Grpc-Status") == "14" {
					unavailable++
				}
			}
			if (unavailable == 0) != (len(codes) > 0) {
				t.Fatalf("retrying gRPC codes %v: %d of 40 answers UNAVAILABLE", codes, unavailable)
			}
		})
	}
}

func TestConnectTimeout(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	e.pod("web-2", "10.244.0.12", web, http.HandlerFunc(ok))
	// web-1's ztunnel accepts connections and never answers the handshake.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	e.mu.Lock()
	e.hboneFor[netip.MustParseAddr("10.244.0.11")] = netip.MustParseAddrPort(hole.Addr().String())
	e.mu.Unlock()
	pol := &configv1.TrafficPolicy{ConnectionPool: &configv1.TrafficPolicy_ConnectionPool{ConnectTimeout: durationpb.New(200 * time.Millisecond)},
		LoadBalancer: &configv1.TrafficPolicy_LoadBalancer{Simple: configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN}}
	if err := routes(e, web, &configv1.Route{Name: "r", Backends: toWeb(pol)}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	for i := 0; i < 6; i++ {
		start := time.Now()
		code, _, h := get(t, c, "GET", "http://web/")
		if code != 200 || h.Get("X-Pod") != "web-2" {
			t.Fatalf("request %d: %d from %q", i, code, h.Get("X-Pod"))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("request %d took %v: the 200 ms connect timeout did not cut the silent endpoint", i, d)
		}
	}
}

func TestConsistentHashByQueryParameter(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	for i := 1; i <= 4; i++ {
		e.pod(fmt.Sprint("web-", i), fmt.Sprint("10.244.0.1", i), web, http.HandlerFunc(ok))
	}
	pol := &configv1.TrafficPolicy{LoadBalancer: &configv1.TrafficPolicy_LoadBalancer{HashQueryParameter: "user"}}
	if err := routes(e, web, &configv1.Route{Name: "r", Backends: toWeb(pol)}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	all := map[string]bool{}
	for u := 0; u < 8; u++ {
		pods := map[string]bool{}
		for i := 0; i < 5; i++ {
			_, _, h := get(t, c, "GET", fmt.Sprintf("http://web/?user=u%d&i=%d", u, i))
			pods[h.Get("X-Pod")] = true
			all[h.Get("X-Pod")] = true
		}
		if len(pods) != 1 {
			t.Fatalf("user u%d went to %v; want one pod", u, pods)
		}
	}
	if len(all) < 2 {
		t.Fatalf("8 users all on %v", all)
	}
}

func TestDirectResponseAndBackendHeaders(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	v1 := e.service("web-v1", "10.96.0.11")
	v2 := e.service("web-v2", "10.96.0.12")
	echo := func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Header.Get("X-Version")) }
	e.pod("web-v1", "10.244.0.21", v1, http.HandlerFunc(echo))
	e.pod("web-v2", "10.244.0.22", v2, http.HandlerFunc(echo))
	err := routes(e, web,
		&configv1.Route{Name: "gone", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/gone"}}}},
			DirectResponse: &configv1.DirectResponse{Status: 410, Body: []byte("gone for good\n")}},
		&configv1.Route{Name: "split", Backends: []*configv1.Backend{
			{Hostname: "web-v1.shop.svc.cluster.local", Port: 80, Weight: 1,
				RequestHeaders: &configv1.HeaderOps{Set: map[string]string{"x-version": "v1"}}, ResponseHeaders: &configv1.HeaderOps{Set: map[string]string{"x-from": "v1"}}},
			{Hostname: "web-v2.shop.svc.cluster.local", Port: 80, Weight: 1,
				RequestHeaders: &configv1.HeaderOps{Set: map[string]string{"x-version": "v2"}}, ResponseHeaders: &configv1.HeaderOps{Set: map[string]string{"x-from": "v2"}}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	if code, body, _ := get(t, c, "GET", "http://web/gone"); code != 410 || body != "gone for good\n" {
		t.Fatalf("direct response: %d %q", code, body)
	}
	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		_, body, h := get(t, c, "GET", "http://web/")
		if body != h.Get("X-From") || h.Get("X-Pod") != "web-"+body {
			t.Fatalf("pod %s got x-version %q and answered x-from %q", h.Get("X-Pod"), body, h.Get("X-From"))
		}
		seen[body]++
	}
	if seen["v1"] == 0 || seen["v2"] == 0 {
		t.Fatalf("split %v", seen)
	}
}

func TestCORS(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	hits := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	if err := routes(e, web, &configv1.Route{Name: "r", Cors: &configv1.CorsPolicy{
		AllowOriginsExact: []string{"https://app.example.com"}, AllowOriginsPrefix: []string{"https://dev-"},
		AllowMethods: []string{"GET", "POST"}, AllowHeaders: []string{"x-token"}, ExposeHeaders: []string{"x-request-id"},
		MaxAge: durationpb.New(time.Hour), AllowCredentials: true, IgnoreUnmatchedPreflights: true,
	}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	do := func(method, origin string) (int, http.Header) {
		req, _ := http.NewRequest(method, "http://web/api", nil)
		req.Header.Set("Origin", origin)
		if method == http.MethodOptions {
			req.Header.Set("Access-Control-Request-Method", "POST")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	code, h := do(http.MethodOptions, "https://dev-42.example.com")
	if code != 200 || h.Get("Access-Control-Allow-Origin") != "https://dev-42.example.com" || h.Get("Access-Control-Allow-Methods") != "GET,POST" ||
		h.Get("Access-Control-Allow-Headers") != "x-token" || h.Get("Access-Control-Max-Age") != "3600" || h.Get("Access-Control-Allow-Credentials") != "true" || hits.Load() != 0 {
		t.Fatalf("preflight from an allowed origin: %d %v, app saw %d", code, h, hits.Load())
	}
	if code, h = do(http.MethodOptions, "https://evil.example.com"); code != 200 || h.Get("Access-Control-Allow-Origin") != "" || hits.Load() != 0 {
		t.Fatalf("preflight from another origin: %d %v", code, h)
	}
	if code, h = do(http.MethodGet, "https://app.example.com"); code != 200 || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		h.Get("Access-Control-Expose-Headers") != "x-request-id" || hits.Load() != 1 {
		t.Fatalf("request from an allowed origin: %d %v", code, h)
	}
	if code, h = do(http.MethodGet, "https://evil.example.com"); code != 200 || h.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("request from another origin: %d %v", code, h)
	}
}

func TestGRPCAbortAndPortLevelPolicy(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	if err := routes(e, web, &configv1.Route{Name: "r", Fault: &configv1.Fault{Abort: &configv1.Fault_Abort{Percentage: 100, Grpc: true, GrpcStatus: 14}}}); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	if code, _, h := get(t, c, "GET", "http://web/"); code != 200 || h.Get("Grpc-Status") != "14" {
		t.Fatalf("gRPC abort: %d, grpc-status %q", code, h.Get("Grpc-Status"))
	}
	tbl, err := route.Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{{Backends: toWeb(&configv1.TrafficPolicy{
		ConnectionPool: &configv1.TrafficPolicy_ConnectionPool{MaxConnections: 10},
		LoadBalancer:   &configv1.TrafficPolicy_LoadBalancer{Simple: configv1.TrafficPolicy_LoadBalancer_RANDOM},
		PortLevel: map[uint32]*configv1.TrafficPolicy{8080: {
			ConnectionPool: &configv1.TrafficPolicy_ConnectionPool{MaxConnections: 1},
		}},
	})}}})
	if err != nil {
		t.Fatal(err)
	}
	pol := tbl.Routes[0].Backends[0].Policy
	if p := pol.ForPort(80); p.MaxConnections != 10 || p.LB != configv1.TrafficPolicy_LoadBalancer_RANDOM {
		t.Fatalf("port 80: %+v", p)
	}
	if p := pol.ForPort(8080); p.MaxConnections != 1 || p.LB != configv1.TrafficPolicy_LoadBalancer_RANDOM {
		t.Fatalf("port 8080: %+v; want its connection pool over the destination's load balancer", p)
	}
}

// tcpNamer is a TCP app that reads one byte, writes its name and closes.
func tcpNamer(t *testing.T, name string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Read(make([]byte, 1))
			_, _ = io.WriteString(c, name)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func TestTCPRouteSplit(t *testing.T) {
	e := newEnv(t)
	web := e.service("db", "10.96.0.10")
	e.podListener("db-v1", "10.244.0.21", web, tcpNamer(t, "v1"))
	e.podListener("db-v2", "10.244.0.22", web, tcpNamer(t, "v2"))
	// Subsets by the pods' labels: label them through their workloads.
	for _, w := range []struct{ name, ip, version string }{{"db-v1", "10.244.0.21", "v1"}, {"db-v2", "10.244.0.22", "v2"}} {
		wl := &configv1.Workload{Uid: "c//Pod/shop/" + w.name, Name: w.name, Namespace: "shop", ServiceAccount: w.name, WorkloadName: w.name,
			Addresses: [][]byte{netip.MustParseAddr(w.ip).AsSlice()}, TunnelProtocol: configv1.TunnelProtocol_HBONE,
			Labels:   map[string]string{"version": w.version},
			Services: map[string]*configv1.PortList{web: {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}}}}
		e.apply(configv1.WorkloadTypeURL, map[string]proto.Message{wl.Uid: wl})
	}
	host := "db.shop.svc.cluster.local"
	if err := e.proxy.Apply(configv1.RouteConfigTypeURL, map[string]proto.Message{web: &configv1.RouteConfig{Hostname: host, Namespace: "shop",
		TcpRoutes: []*configv1.Route{{Name: "shift", Ports: []uint32{80}, Backends: []*configv1.Backend{
			{Hostname: host, Weight: 80, Subset: map[string]string{"version": "v1"}, SubsetName: "v1"},
			{Hostname: host, Weight: 20, Subset: map[string]string{"version": "v2"}, SubsetName: "v2"},
		}}}}}, nil); err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for i := 0; i < 400; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := e.dial(ctx, sa("client"), webVIP)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// Client-first and not HTTP: the waypoint passes it through at once, without waiting
		// out the sniffing timeout.
		if _, err := c.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		c.Close()
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		n[string(b)]++
	}
	share := float64(n["v1"]) / 400 * 100
	t.Logf("TCP 80/20 over 400 connections: %v (%.1f%% v1)", n, share)
	if n["v1"]+n["v2"] != 400 || share < 72 || share > 88 {
		t.Fatalf("TCP split %v (%.1f%% v1), want 80 ± 8", n, share)
	}
}

func TestTLSRouteBySNI(t *testing.T) {
	e := newEnv(t)
	web := e.service("db", "10.96.0.10")
	e.podListener("db-a", "10.244.0.21", web, tcpNamer(t, "a"))
	e.podListener("db-b", "10.244.0.22", web, tcpNamer(t, "b"))
	a := e.service("db-a", "10.96.0.11")
	b := e.service("db-b", "10.96.0.12")
	e.podListener("db-a", "10.244.0.21", a, tcpNamer(t, "a"))
	e.podListener("db-b", "10.244.0.22", b, tcpNamer(t, "b"))
	if err := e.proxy.Apply(configv1.RouteConfigTypeURL, map[string]proto.Message{web: &configv1.RouteConfig{Hostname: "db.shop.svc.cluster.local", Namespace: "shop",
		TcpRoutes: []*configv1.Route{
			{Name: "a", SniHosts: []string{"a.example.com"}, Backends: []*configv1.Backend{{Hostname: "db-a.shop.svc.cluster.local", Port: 80, Weight: 1}}},
			{Name: "b", SniHosts: []string{"*.b.example.com"}, Backends: []*configv1.Backend{{Hostname: "db-b.shop.svc.cluster.local", Port: 80, Weight: 1}}},
		}}}, nil); err != nil {
		t.Fatal(err)
	}
	for sni, want := range map[string]string{"a.example.com": "a", "x.b.example.com": "b"} {
		for i := 0; i < 5; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := e.dial(ctx, sa("client"), webVIP)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(clientHello(t, sni)); err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(c)
			c.Close()
			cancel()
			if string(got) != want {
				t.Fatalf("SNI %s went to %q, want %q", sni, got, want)
			}
		}
	}
}
