package proxy

import (
	"fmt"
	"net/http"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
)

// TestGatewayAPIFilters: the Route fields Gateway API's filters and matches compile to and a
// VirtualService's do not (full-path rewrite under a prefix match, prefix redirects, derived
// redirect ports, regular expressions), through the real proxy. The fields both share are
// TestHeadersRewriteRedirect's and TestMirror's.
func TestGatewayAPIFilters(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s?%s", r.URL.Path, r.URL.RawQuery)
	}))
	prefix := func(p string) []*configv1.RouteMatch {
		return []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: p}}}}
	}
	regex := func(p string) []*configv1.RouteMatch {
		return []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: p}}}}
	}
	err := routes(e, web,
		&configv1.Route{Name: "shop", Matches: prefix("/shop"), Redirect: &configv1.Redirect{Scheme: "https", Authority: "www.example.com",
			Code: 301, Path: "/store", ReplacePrefix: true, DerivePort: configv1.Redirect_FROM_PROTOCOL_DEFAULT}},
		&configv1.Route{Name: "moved", Matches: prefix("/old-page"), Redirect: &configv1.Redirect{Code: 302, Path: "/moved",
			DerivePort: configv1.Redirect_FROM_REQUEST_PORT}},
		&configv1.Route{Name: "port80", Matches: prefix("/plain"), Redirect: &configv1.Redirect{Code: 302, Port: 80,
			DerivePort: configv1.Redirect_FROM_REQUEST_PORT}},
		&configv1.Route{Name: "full", Matches: prefix("/old"), Rewrite: &configv1.Rewrite{Path: "/new", FullPath: true}},
		&configv1.Route{Name: "ids", Matches: []*configv1.RouteMatch{{
			Path:        &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "/users/[0-9]+"}},
			QueryParams: []*configv1.QueryMatch{{Name: "fields", Regex: "[a-z,]+"}}}},
			Rewrite: &configv1.Rewrite{Path: "/by-id"}},
		&configv1.Route{Name: "regex", Matches: regex("/users/.*"), Rewrite: &configv1.Rewrite{Path: "/users-other"}},
		&configv1.Route{Name: "root", Matches: prefix("/"), Rewrite: &configv1.Rewrite{Path: "/v2"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	c := e.httpClient(sa("client"), webVIP, false)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct{ url, code, location string }{
		{"http://web:8080/shop/cart?x=1", "301", "https://www.example.com/store/cart?x=1"},
		{"http://web:8080/old-page", "302", "http://web:8080/moved"},
		{"http://web/old-page", "302", "http://web/moved"},
		{"http://web:8080/plain/x", "302", "http://web/plain/x"},
	} {
		code, _, h := get(t, c, "GET", tc.url)
		if fmt.Sprint(code) != tc.code || h.Get("Location") != tc.location {
			t.Errorf("GET %s: %d Location %q, want %s %s", tc.url, code, h.Get("Location"), tc.code, tc.location)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"http://web/old/deep/path?q=1", "/new?q=1"},
		{"http://web/users/42?fields=name,email", "/by-id?fields=name,email"},
		{"http://web/users/42?fields=NAME", "/users-other?fields=NAME"},
		{"http://web/users/ann", "/users-other?"},
		{"http://web/x/y", "/v2/x/y?"},
	} {
		if code, body, _ := get(t, c, "GET", tc.url); code != 200 || body != tc.want {
			t.Errorf("GET %s: %d, the app saw %q, want %q", tc.url, code, body, tc.want)
		}
	}
}
