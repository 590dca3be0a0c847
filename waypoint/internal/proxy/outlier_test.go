package proxy

import (
	"testing"
	"time"

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
