package route

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
)

func TestMatch(t *testing.T) {
	rc := &configv1.RouteConfig{Namespace: "shop", Routes: []*configv1.Route{
		{Name: "exact", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/login"}}, Method: "POST"}}},
		{Name: "api", Ports: []uint32{80}, Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "/api/"}}}}},
		{Name: "canary", Matches: []*configv1.RouteMatch{{Headers: []*configv1.HeaderMatch{{Name: "x-canary", Value: "yes"}}}}},
		{Name: "rest"},
	}}
	tbl, err := Compile("shop/web.shop.svc.cluster.local", rc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path string
		port         uint16
		header       string
		want         string
	}{
		{"POST", "/login", 80, "", "exact"},
		{"GET", "/login", 80, "", "rest"},
		{"GET", "/api", 80, "", "api"},
		{"GET", "/api/v1", 80, "", "api"},
		{"GET", "/apis", 80, "", "rest"},
		{"GET", "/api/v1", 8080, "", "rest"},
		{"GET", "/x", 80, "yes", "canary"},
	} {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.header != "" {
			r.Header.Set("X-Canary", tc.header)
		}
		got := tbl.Match(tc.port, r)
		if got == nil || got.Name != tc.want {
			t.Errorf("%s %s :%d → %v, want %s", tc.method, tc.path, tc.port, got, tc.want)
		}
	}
	if (&Table{}).Match(80, httptest.NewRequest("GET", "/", nil)) != nil {
		t.Error("an empty table matched")
	}
	_ = http.MethodGet
}

func TestPickBackend(t *testing.T) {
	r := &Route{Backends: []Backend{{Service: "a", Weight: 0}, {Service: "b", Weight: 3}}, total: 3}
	for i := 0; i < 100; i++ {
		if b, ok := r.PickBackend(); !ok || b.Service != "b" {
			t.Fatalf("picked %v %v", b, ok)
		}
	}
	if _, ok := (&Route{Backends: []Backend{{Service: "a"}}}).PickBackend(); ok {
		t.Fatal("all-zero weights must not pick")
	}
	if b, ok := (&Route{}).PickBackend(); !ok || b.Service != "" {
		t.Fatal("no backends means the parent Service")
	}
}

func TestServiceKey(t *testing.T) {
	if got := ServiceKey("web.shop.svc.cluster.local", "x"); got != "shop/web.shop.svc.cluster.local" {
		t.Fatal(got)
	}
	if got := ServiceKey("web", "x"); got != "x/web" {
		t.Fatal(got)
	}
}

func TestStringPrefixMatch(t *testing.T) {
	tbl, err := Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{
		{Name: "api", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: "/api"}}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{"/api": true, "/apis": true, "/api/v1": true, "/ap": false, "/x/api": false} {
		if got := tbl.Match(80, httptest.NewRequest("GET", path, nil)) != nil; got != want {
			t.Errorf("%s: matched %v, want %v (Istio's uri.prefix is a string prefix)", path, got, want)
		}
	}
}

func TestCompileRefusesBadTrafficFields(t *testing.T) {
	be := func(p *configv1.TrafficPolicy) []*configv1.Backend {
		return []*configv1.Backend{{Hostname: "web.shop.svc.cluster.local", Weight: 1, Policy: p}}
	}
	for _, tc := range []struct {
		r     *configv1.Route
		field string
	}{
		{&configv1.Route{Redirect: &configv1.Redirect{Code: 200}}, "routes[0].redirect.code"},
		{&configv1.Route{Redirect: &configv1.Redirect{Scheme: "ftp"}}, "routes[0].redirect.scheme"},
		{&configv1.Route{Rewrite: &configv1.Rewrite{Path: "no-slash"}}, "routes[0].rewrite.path"},
		{&configv1.Route{RequestHeaders: &configv1.HeaderOps{Set: map[string]string{"bad name": "x"}}}, "routes[0].request_headers.set"},
		{&configv1.Route{Mirrors: []*configv1.Mirror{{Hostname: "m", Percentage: 101}}}, "routes[0].mirrors[0].percentage"},
		{&configv1.Route{Retry: &configv1.Retry{On: []string{"5xx"}}}, "routes[0].retry.on[0]"},
		{&configv1.Route{Backends: be(&configv1.TrafficPolicy{OutlierDetection: &configv1.TrafficPolicy_OutlierDetection{MaxEjectionPercent: 101}})}, "routes[0].backends[0].policy.outlier_detection.max_ejection_percent"},
		{&configv1.Route{Backends: be(&configv1.TrafficPolicy{RetryBudget: &configv1.TrafficPolicy_RetryBudget{Percent: -1}})}, "routes[0].backends[0].policy.retry_budget.percent"},
		{&configv1.Route{Backends: be(&configv1.TrafficPolicy{LoadBalancer: &configv1.TrafficPolicy_LoadBalancer{Simple: 42}})}, "routes[0].backends[0].policy.load_balancer.simple"},
	} {
		_, err := Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{tc.r}})
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%v: error %v, want one naming %s", tc.r, err, tc.field)
		}
	}
}

func TestIstioMatches(t *testing.T) {
	tbl, err := Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{{Name: "m", Matches: []*configv1.RouteMatch{{
		Path: &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: "/Api"}}, PathIgnoreCase: true,
		Headers: []*configv1.HeaderMatch{
			{Name: "x-bot", Value: "yes", Invert: true},
			{Name: "x-debug", Present: true},
			{Name: "x-user", Prefix: "admin-"},
		},
		QueryParams:     []*configv1.QueryMatch{{Name: "v", Value: "2"}},
		Authority:       &configv1.HeaderMatch{Prefix: "web"},
		SourceNamespace: "demo", SourceLabels: map[string]string{"app": "client"},
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	client := Source{Namespace: "demo", Labels: map[string]string{"app": "client", "version": "v1"}}
	req := func(mod func(*http.Request)) *http.Request {
		r := httptest.NewRequest("GET", "http://web.shop:80/API/users?v=2", nil)
		r.Header.Set("X-Debug", "")
		r.Header.Set("X-User", "admin-ann")
		if mod != nil {
			mod(r)
		}
		return r
	}
	if tbl.MatchFrom(80, req(nil), client) == nil {
		t.Fatal("the request that fits every condition did not match")
	}
	for name, tc := range map[string]struct {
		mod func(*http.Request)
		src Source
	}{
		"without header present": {func(r *http.Request) { r.Header.Set("X-Bot", "yes") }, client},
		"header absent":          {func(r *http.Request) { r.Header.Del("X-Debug") }, client},
		"prefix differs":         {func(r *http.Request) { r.Header.Set("X-User", "guest") }, client},
		"query differs":          {func(r *http.Request) { r.URL.RawQuery = "v=1" }, client},
		"authority differs":      {func(r *http.Request) { r.Host = "api.shop" }, client},
		"path differs":           {func(r *http.Request) { r.URL.Path = "/other" }, client},
		"other source namespace": {nil, Source{Namespace: "shop", Labels: client.Labels}},
		"source lacks the label": {nil, Source{Namespace: "demo"}},
		"no source (Match)":      {nil, Source{}},
	} {
		if tbl.MatchFrom(80, req(tc.mod), tc.src) != nil {
			t.Errorf("%s: matched", name)
		}
	}
}
