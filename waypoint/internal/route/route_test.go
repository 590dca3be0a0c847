package route

import (
	"net/http"
	"net/http/httptest"
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
