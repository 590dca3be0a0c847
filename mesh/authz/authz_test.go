package authz

import (
	"net/netip"
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
)

func allow(name string, rules ...*configv1.Rule) *configv1.Authorization {
	return &configv1.Authorization{Name: name, Namespace: "shop", Action: configv1.Authorization_ALLOW, Rules: rules}
}

func deny(name string, rules ...*configv1.Rule) *configv1.Authorization {
	p := allow(name, rules...)
	p.Action = configv1.Authorization_DENY
	return p
}

func from(s *configv1.Source) *configv1.Rule { return &configv1.Rule{From: []*configv1.Source{s}} }

func to(op *configv1.Operation) *configv1.Rule { return &configv1.Rule{To: []*configv1.Operation{op}} }

func block(cidr string) *configv1.IPBlock {
	p := netip.MustParsePrefix(cidr)
	return &configv1.IPBlock{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func TestEvaluate(t *testing.T) {
	web := Request{Principal: "spiffe://cluster.local/ns/shop/sa/web", Namespace: "shop", Source: netip.MustParseAddr("10.0.1.5"), Port: 8080}
	plain := Request{Source: netip.MustParseAddr("10.0.9.9"), Port: 8080}
	get := web
	get.HTTP = &HTTP{Method: "GET", Path: "/public/index.html?x=1"}
	post := web
	post.HTTP = &HTTP{Method: "POST", Path: "/admin"}

	tests := []struct {
		name     string
		policies []*configv1.Authorization
		req      Request
		allow    bool
		reason   string
	}{
		{"no policy allows", nil, web, true, "no policy applies"},
		{"allow by principal with scheme", []*configv1.Authorization{allow("a", from(&configv1.Source{Principals: []string{"spiffe://cluster.local/ns/shop/sa/web"}}))}, web, true, "allowed by policy shop/a"},
		{"allow by principal without scheme", []*configv1.Authorization{allow("a", from(&configv1.Source{Principals: []string{"cluster.local/ns/shop/sa/web"}}))}, web, true, ""},
		{"principal prefix wildcard", []*configv1.Authorization{allow("a", from(&configv1.Source{Principals: []string{"cluster.local/ns/shop/*"}}))}, web, true, ""},
		{"principal suffix wildcard", []*configv1.Authorization{allow("a", from(&configv1.Source{Principals: []string{"*/sa/web"}}))}, web, true, ""},
		{"other principal not allowed", []*configv1.Authorization{allow("a", from(&configv1.Source{Principals: []string{"cluster.local/ns/shop/sa/db"}}))}, web, false, "no ALLOW policy matched"},
		{"plaintext never matches principals", []*configv1.Authorization{allow("a", from(&configv1.Source{Principals: []string{"*"}}))}, plain, false, ""},
		{"not_principals", []*configv1.Authorization{allow("a", from(&configv1.Source{NotPrincipals: []string{"*/sa/web"}}))}, web, false, ""},
		{"namespace", []*configv1.Authorization{allow("a", from(&configv1.Source{Namespaces: []string{"shop"}}))}, web, true, ""},
		{"not namespace", []*configv1.Authorization{allow("a", from(&configv1.Source{NotNamespaces: []string{"shop"}}))}, web, false, ""},
		{"ip block", []*configv1.Authorization{allow("a", from(&configv1.Source{IpBlocks: []*configv1.IPBlock{block("10.0.1.0/24")}}))}, web, true, ""},
		{"outside ip block", []*configv1.Authorization{allow("a", from(&configv1.Source{IpBlocks: []*configv1.IPBlock{block("10.0.2.0/24")}}))}, web, false, ""},
		{"not ip block", []*configv1.Authorization{allow("a", from(&configv1.Source{NotIpBlocks: []*configv1.IPBlock{block("10.0.0.0/16")}}))}, web, false, ""},
		{"single ip", []*configv1.Authorization{allow("a", from(&configv1.Source{IpBlocks: []*configv1.IPBlock{block("10.0.9.9/32")}}))}, plain, true, ""},
		{"port", []*configv1.Authorization{allow("a", to(&configv1.Operation{Ports: []uint32{8080}}))}, web, true, ""},
		{"other port", []*configv1.Authorization{allow("a", to(&configv1.Operation{Ports: []uint32{9090}}))}, web, false, ""},
		{"not port", []*configv1.Authorization{allow("a", to(&configv1.Operation{NotPorts: []uint32{8080}}))}, web, false, ""},
		{"fields AND within a source", []*configv1.Authorization{allow("a", from(&configv1.Source{Namespaces: []string{"shop"}, IpBlocks: []*configv1.IPBlock{block("192.168.0.0/16")}}))}, web, false, ""},
		{"rules OR", []*configv1.Authorization{allow("a", from(&configv1.Source{Namespaces: []string{"other"}}), to(&configv1.Operation{Ports: []uint32{8080}}))}, web, true, ""},
		{"allow with no rules allows nothing", []*configv1.Authorization{allow("a")}, web, false, ""},
		{"deny with no rules denies nothing", []*configv1.Authorization{deny("d")}, web, true, "no policy applies"},
		{"empty rule in deny denies all", []*configv1.Authorization{deny("d", &configv1.Rule{})}, web, false, "denied by policy shop/d"},
		{"deny wins over allow", []*configv1.Authorization{allow("a", &configv1.Rule{}), deny("d", from(&configv1.Source{Namespaces: []string{"shop"}}))}, web, false, "denied by policy shop/d"},
		{"deny not matching, allow matching", []*configv1.Authorization{allow("a", &configv1.Rule{}), deny("d", from(&configv1.Source{Namespaces: []string{"other"}}))}, web, true, "allowed by policy shop/a"},
		{"L7 rule at L4 fails closed (allow)", []*configv1.Authorization{allow("l7", to(&configv1.Operation{Methods: []string{"GET"}}))}, web, false, "has HTTP rules"},
		{"L7 rule at L4 fails closed (deny)", []*configv1.Authorization{deny("l7", to(&configv1.Operation{Paths: []string{"/admin"}}))}, web, false, "no waypoint"},
		{"L7 method allowed at waypoint", []*configv1.Authorization{allow("l7", to(&configv1.Operation{Methods: []string{"GET"}, Paths: []string{"/public/*"}}))}, get, true, ""},
		{"L7 method refused at waypoint", []*configv1.Authorization{allow("l7", to(&configv1.Operation{Methods: []string{"GET"}, Paths: []string{"/public/*"}}))}, post, false, ""},
		{"L7 deny path at waypoint", []*configv1.Authorization{allow("all", &configv1.Rule{}), deny("admin", to(&configv1.Operation{Paths: []string{"/admin"}}))}, post, false, "denied by policy shop/admin"},
		{"L7 not_methods", []*configv1.Authorization{allow("a", to(&configv1.Operation{NotMethods: []string{"POST"}}))}, post, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Evaluate(tc.policies, tc.req)
			if d.Allow != tc.allow {
				t.Fatalf("allow = %v (%s), want %v", d.Allow, d.Reason, tc.allow)
			}
			if !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("reason %q does not contain %q", d.Reason, tc.reason)
			}
		})
	}
}

func TestWildcard(t *testing.T) {
	for _, tc := range []struct {
		p, v string
		want bool
	}{{"*", "x", true}, {"*", "", false}, {"a*", "abc", true}, {"a*", "ba", false}, {"*c", "abc", true}, {"*c", "cb", false}, {"abc", "abc", true}, {"abc", "abcd", false}, {"a.c", "abc", false}} {
		if got := wildcard(tc.p, tc.v); got != tc.want {
			t.Errorf("wildcard(%q, %q) = %v", tc.p, tc.v, got)
		}
	}
}

func when(key string, values, notValues []string) *configv1.Rule {
	return &configv1.Rule{When: []*configv1.Condition{{Key: key, Values: values, NotValues: notValues}}}
}

func TestEvaluateWhen(t *testing.T) {
	web := Request{Principal: "spiffe://cluster.local/ns/shop/sa/web", Namespace: "shop", Source: netip.MustParseAddr("10.0.1.5"), Port: 8080}
	canary := web
	canary.HTTP = &HTTP{Method: "GET", Path: "/", Headers: map[string][]string{"X-Canary": {"true"}}}
	plainGet := web
	plainGet.HTTP = &HTTP{Method: "GET", Path: "/"}
	tests := []struct {
		name     string
		policies []*configv1.Authorization
		req      Request
		allow    bool
	}{
		{"header value", []*configv1.Authorization{allow("a", when("request.headers[x-canary]", []string{"true"}, nil))}, canary, true},
		{"header absent", []*configv1.Authorization{allow("a", when("request.headers[x-canary]", []string{"*"}, nil))}, plainGet, false},
		{"header not value", []*configv1.Authorization{deny("a", when("request.headers[X-Canary]", nil, []string{"false"}))}, canary, false},
		{"header at L4 fails closed", []*configv1.Authorization{allow("a", when("request.headers[x-canary]", []string{"true"}, nil))}, web, false},
		{"source.ip cidr", []*configv1.Authorization{allow("a", when("source.ip", []string{"10.0.0.0/16"}, nil))}, web, true},
		{"remote.ip other", []*configv1.Authorization{allow("a", when("remote.ip", []string{"10.9.0.0/16"}, nil))}, web, false},
		{"source.namespace", []*configv1.Authorization{allow("a", when("source.namespace", []string{"sh*"}, nil))}, web, true},
		{"source.principal", []*configv1.Authorization{allow("a", when("source.principal", []string{"cluster.local/ns/shop/sa/web"}, nil))}, web, true},
		{"destination.port", []*configv1.Authorization{allow("a", when("destination.port", nil, []string{"8080"}))}, web, false},
		{"unknown key in ALLOW never holds", []*configv1.Authorization{allow("a", when("request.auth.claims[iss]", []string{"*"}, nil))}, canary, false},
		{"unknown key in DENY always holds", []*configv1.Authorization{deny("a", when("request.auth.claims[iss]", []string{"x"}, nil))}, canary, false},
		{"conditions AND with from", []*configv1.Authorization{allow("a", &configv1.Rule{
			From: []*configv1.Source{{Namespaces: []string{"shop"}}},
			When: []*configv1.Condition{{Key: "source.ip", Values: []string{"10.0.2.0/24"}}},
		})}, web, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := Evaluate(tt.policies, tt.req); d.Allow != tt.allow {
				t.Fatalf("allow = %v (%s), want %v", d.Allow, d.Reason, tt.allow)
			}
		})
	}
}
