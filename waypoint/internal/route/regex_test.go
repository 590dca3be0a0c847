package route

import (
	"net/http/httptest"
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
)

func TestRegexMatches(t *testing.T) {
	tbl, err := Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{
		{Name: "path", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "/users/[0-9]+"}}}}},
		{Name: "header", Matches: []*configv1.RouteMatch{{Headers: []*configv1.HeaderMatch{{Name: "x-tenant", Regex: "team-(a|b)"}}}}},
		{Name: "query", Matches: []*configv1.RouteMatch{{QueryParams: []*configv1.QueryMatch{{Name: "v", Value: "2"}, {Name: "id", Regex: "[a-f0-9]{4}"}}}}},
		{Name: "authority", Matches: []*configv1.RouteMatch{{Authority: &configv1.HeaderMatch{Regex: "api-[0-9]+\\.example\\.com"}}}},
		{Name: "rest"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ target, tenant, want string }{
		{"/users/42", "", "path"},
		{"/users/42/orders", "", "rest"}, // the whole path must match
		{"/x/users/42", "", "rest"},
		{"/x", "team-a", "header"},
		{"/x", "team-ab", "rest"},
		{"/x", "my-team-a", "rest"},
		{"/x?v=2&id=beef", "", "query"},
		{"/x?v=2&id=beefy", "", "rest"},
		{"/x?v=1&id=beef", "", "rest"},
		{"/x?v=2&id=cafe&id=zz", "", "query"}, // any value of the parameter
		{"http://api-7.example.com:8080/x", "", "authority"},
		{"http://api-7.example.community/x", "", "rest"},
	} {
		r := httptest.NewRequest("GET", tc.target, nil)
		if tc.tenant != "" {
			r.Header.Set("X-Tenant", tc.tenant)
		}
		if got := tbl.Match(80, r); got == nil || got.Name != tc.want {
			t.Errorf("%s x-tenant %q → %v, want %s", tc.target, tc.tenant, got, tc.want)
		}
	}
}

func TestCompileRefusesBadRegex(t *testing.T) {
	for _, tc := range []struct {
		m     *configv1.RouteMatch
		field string
	}{
		{&configv1.RouteMatch{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "/(a"}}}, "routes[0].matches[0].path.regex"},
		{&configv1.RouteMatch{Headers: []*configv1.HeaderMatch{{Name: "a", Regex: "x(?=y)"}}}, "routes[0].matches[0].headers[0].regex"},
		{&configv1.RouteMatch{Authority: &configv1.HeaderMatch{Regex: "a)"}}, "routes[0].matches[0].authority.regex"},
		{&configv1.RouteMatch{QueryParams: []*configv1.QueryMatch{{Name: "a", Regex: strings.Repeat("a", MaxRegexLen+1)}}}, "routes[0].matches[0].query_params[0].regex"},
	} {
		_, err := Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{{Matches: []*configv1.RouteMatch{tc.m}}}})
		if err == nil || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%v: error %v, want one naming %s", tc.m, err, tc.field)
		}
	}
}

func TestRewritePath(t *testing.T) {
	prefix := func(p string) []*configv1.RouteMatch {
		return []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: p}}}}
	}
	for _, tc := range []struct {
		name    string
		matches []*configv1.RouteMatch
		path    string
		to      string
		full    bool
		want    string
	}{
		{"prefix", prefix("/foo"), "/foo/bar", "/xyz", false, "/xyz/bar"},
		{"prefix with slash", prefix("/foo/"), "/foo/bar", "/xyz/", false, "/xyz/bar"},
		{"prefix removed", prefix("/foo"), "/foo/bar", "/", false, "/bar"},
		{"prefix alone", prefix("/foo"), "/foo", "/xyz", false, "/xyz"},
		{"root prefix", prefix("/"), "/foo", "/v2", false, "/v2/foo"},
		{"root prefix to root", prefix("/"), "/foo", "/", false, "/foo"},
		{"full path under a prefix", prefix("/foo"), "/foo/bar", "/new", true, "/new"},
		{"string prefix", []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: "/v1/"}}}}, "/v1/users", "/api/", false, "/api/users"},
		{"regex", []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "/a.*"}}}}, "/abc", "/z", false, "/z"},
		{"no path match", nil, "/abc", "/z", false, "/z"},
	} {
		tbl, err := Compile("shop/web", &configv1.RouteConfig{Routes: []*configv1.Route{{Matches: tc.matches}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := tbl.Routes[0].RewritePath(tc.path, tc.to, tc.full); got != tc.want {
			t.Errorf("%s: %s → %s, want %s", tc.name, tc.path, got, tc.want)
		}
	}
}
