package proxy

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
)

// TestOutlierDetectionTurnedOff: a DestinationRule's outlierDetection with both thresholds 0
// (Istio's consecutive5xxErrors: 0) turns ejection off; it does not fall back to the
// waypoint's defaults. A policy without outlierDetection keeps them.
func TestOutlierDetectionTurnedOff(t *testing.T) {
	compile := func(p *configv1.TrafficPolicy) *route.Policy {
		t.Helper()
		tbl, err := route.Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{{
			Backends: []*configv1.Backend{{Hostname: "web.shop.svc.cluster.local", Weight: 1, Policy: p}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return tbl.Routes[0].Backends[0].Policy
	}
	for _, tc := range []struct {
		name   string
		policy *configv1.TrafficPolicy
		eject  bool
	}{
		{"outlier detection off", &configv1.TrafficPolicy{OutlierDetection: &configv1.TrafficPolicy_OutlierDetection{}}, false},
		{"no outlier detection: the waypoint's defaults", &configv1.TrafficPolicy{LoadBalancer: &configv1.TrafficPolicy_LoadBalancer{}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol := compile(tc.policy)
			b := newBalancer(5, 30*time.Second, 50, time.Now)
			eps := endpoints(2)
			ejected := false
			for i := 0; i < 20; i++ {
				b.pick(eps[:1], nil, pickReq{pol: pol})
				b.release(eps[0].Addr)
				ejected = b.result(eps[0].Addr, 503, eps, pol) || ejected
			}
			if ejected != tc.eject {
				t.Fatalf("20 failures in a row: ejected %v, want %v", ejected, tc.eject)
			}
		})
	}
}

// TestTrialOnlyForAnsweredRequests: after an ejection, the endpoint's one trial goes to a
// request whose outcome comes back. A mirrored copy never takes it (nobody reports a copy's
// outcome, so the endpoint would stay out of rotation for good), and a request the client
// abandons hands it on to the next request.
func TestTrialOnlyForAnsweredRequests(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	b := newBalancer(1, 10*time.Second, 50, clk.Now)
	eps := endpoints(2)
	bad, good := eps[0].Addr, eps[1].Addr
	b.pick(eps[:1], nil, pickReq{})
	b.release(bad)
	if !b.result(bad, 503, eps, nil) {
		t.Fatal("not ejected after a failure with a threshold of 1")
	}
	clk.Add(10 * time.Second)
	// good is busy, so a request prefers bad, whose ejection is over: its trial is open.
	for range 3 {
		b.pick(eps[1:], nil, pickReq{})
	}
	for i := range 5 {
		if a := b.pick(eps, nil, pickReq{shadow: true}).addr; a != good {
			t.Fatalf("mirrored copy %d went to %v, on trial; want %v", i, a, good)
		}
		b.release(good)
	}
	first := b.pick(eps, nil, pickReq{})
	if first.addr != bad || !first.trial {
		t.Fatalf("the first request after the copies went to %v (trial %v); want the trial at %v", first.addr, first.trial, bad)
	}
	second := b.pick(eps, nil, pickReq{})
	if second.addr != good {
		t.Fatalf("a second request went to %v while the trial is in flight; want %v", second.addr, good)
	}
	// Its client goes away: it held no trial, so the trial in flight stays the only one.
	b.release(good)
	b.abandon(second)
	if a := b.pick(eps, nil, pickReq{}).addr; a != good {
		t.Fatalf("after an abandoned request that held no trial, a request went to %v; want %v", a, good)
	}
	b.release(good)
	// The trial's client goes away before its answer: no verdict, and the trial is open again.
	b.release(bad)
	b.abandon(first)
	if b.ejected(bad) {
		t.Fatal("an abandoned trial ejected the endpoint")
	}
	if a := b.pick(eps, nil, pickReq{}).addr; a != bad {
		t.Fatalf("after the abandoned trial a request went to %v; want a new trial at %v", a, bad)
	}
	b.release(bad)
	if b.result(bad, 200, eps, nil) {
		t.Fatal("a successful trial ejected")
	}
	if got := pickSpread(b, eps, 20); got[bad] < 5 {
		t.Fatalf("after a successful trial: %v of 20; want the endpoint back in rotation", got)
	}
}

func pickSpread(b *balancer, eps []state.Endpoint, n int) map[netip.AddrPort]int {
	got := map[netip.AddrPort]int{}
	for range n {
		a := b.pick(eps, nil, pickReq{}).addr
		b.release(a)
		got[a]++
	}
	return got
}

// TestClientGoneIsNoEndpointFailure: requests the client abandons while the endpoint is still
// working count as no failure of the endpoint.
func TestClientGoneIsNoEndpointFailure(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Consecutive5xx = 2; c.EjectionTime = time.Minute })
	web := e.service("web", "10.96.0.10")
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}
	})
	e.pod("web-1", "10.244.0.11", web, slow)
	e.pod("web-2", "10.244.0.12", web, slow)
	c := e.httpClient(sa("client"), webVIP, true) // HTTP/2: a client that gives up resets its stream
	c.Timeout = 100 * time.Millisecond
	for range 8 {
		if resp, err := c.Get("http://web/slow"); err == nil {
			resp.Body.Close()
			t.Fatalf("GET /slow answered %s before the client's timeout", resp.Status)
		}
	}
	// The waypoint learns of each abandoned request shortly after the client closes.
	deadline := time.Now().Add(5 * time.Second)
	for e.proxy.lb.inFlight() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests still in flight at the waypoint 5 s after their clients left", e.proxy.lb.inFlight())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, ip := range []string{"10.244.0.11", "10.244.0.12"} {
		if a := netip.AddrPortFrom(netip.MustParseAddr(ip), 8080); e.proxy.lb.ejected(a) {
			t.Fatalf("%v ejected after requests only the client abandoned", a)
		}
	}
}
