package model

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"ambit.dev/controller/internal/istioapi"
)

// gatewayRoute decodes an HTTPRoute written as YAML, the way a user writes it.
func gatewayRoute(t *testing.T, doc string) *gatewayv1.HTTPRoute {
	t.Helper()
	var r gatewayv1.HTTPRoute
	if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// webHTTPRoute is an HTTPRoute on Service web of namespace demo with rules (YAML, indented
// as items of spec.rules).
func webHTTPRoute(t *testing.T, rules string) *gatewayv1.HTTPRoute {
	return gatewayRoute(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
`+rules)
}

// convertOne converts r and returns the routes of its only parent.
func convertOne(t *testing.T, r *gatewayv1.HTTPRoute) []*configv1.Route {
	t.Helper()
	att, err := ConvertHTTPRoute(r, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if len(att) != 1 {
		t.Fatalf("attached to %d parents, want 1", len(att))
	}
	var out []*configv1.Route
	for _, e := range att[0].Entries {
		out = append(out, e.Route)
	}
	return out
}

func TestHTTPRouteFilters(t *testing.T) {
	prefix := func(p string) []*configv1.RouteMatch {
		return []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: p}}}}
	}
	web := &configv1.Backend{Hostname: "web.demo.svc.cluster.local", Port: 80, Weight: 1}
	for _, tc := range []struct {
		name, rules string
		want        *configv1.Route
	}{{"header modifiers", `
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-env, value: prod}]
        add: [{name: x-trace, value: "on"}]
        remove: [x-debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        remove: [server]
    backendRefs:
    - name: web
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-backend, value: web}]}
`, &configv1.Route{Matches: prefix("/"),
		RequestHeaders:  &configv1.HeaderOps{Set: map[string]string{"x-env": "prod"}, Add: map[string]string{"x-trace": "on"}, Remove: []string{"x-debug"}},
		ResponseHeaders: &configv1.HeaderOps{Remove: []string{"server"}},
		Backends: []*configv1.Backend{{Hostname: web.Hostname, Port: 80, Weight: 1,
			RequestHeaders: &configv1.HeaderOps{Set: map[string]string{"x-backend": "web"}}}}},
	}, {"rewrite prefix", `
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}
    backendRefs: [{name: web, port: 80}]
`, &configv1.Route{Matches: prefix("/v1"), Backends: []*configv1.Backend{web},
		Rewrite: &configv1.Rewrite{Path: "/api", Authority: "api.internal"}},
	}, {"rewrite full path", `
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new}}
    backendRefs: [{name: web, port: 80}]
`, &configv1.Route{Matches: prefix("/old"), Backends: []*configv1.Backend{web},
		Rewrite: &configv1.Rewrite{Path: "/new", FullPath: true}},
	}, {"redirect", `
  - matches: [{path: {type: PathPrefix, value: /shop}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: www.example.com, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /store}}
`, &configv1.Route{Matches: prefix("/shop"),
		Redirect: &configv1.Redirect{Scheme: "https", Authority: "www.example.com", Code: 301, Path: "/store", ReplacePrefix: true,
			DerivePort: configv1.Redirect_FROM_PROTOCOL_DEFAULT}},
	}, {"redirect defaults", `
  - filters:
    - type: RequestRedirect
      requestRedirect: {port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /moved}}
`, &configv1.Route{Matches: prefix("/"),
		Redirect: &configv1.Redirect{Port: 8443, Code: 302, Path: "/moved", DerivePort: configv1.Redirect_FROM_REQUEST_PORT}},
	}, {"mirrors", `
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-shadow, port: 8080}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: audit, namespace: ops, port: 80}, percent: 10}
    - type: RequestMirror
      requestMirror: {backendRef: {name: audit, namespace: ops, port: 80}, fraction: {numerator: 1, denominator: 1000}}
    backendRefs: [{name: web, port: 80}]
`, &configv1.Route{Matches: prefix("/"), Backends: []*configv1.Backend{web}, Mirrors: []*configv1.Mirror{
		{Hostname: "web-shadow.demo.svc.cluster.local", Port: 8080, Percentage: 100},
		{Hostname: "audit.ops.svc.cluster.local", Port: 80, Percentage: 10},
		{Hostname: "audit.ops.svc.cluster.local", Port: 80, Percentage: 0.1}}},
	}, {"cors", `
  - filters:
    - type: CORS
      cors: {allowOrigins: ["https://app.example.com"], allowMethods: [GET, POST], allowHeaders: [x-user], exposeHeaders: [x-id], allowCredentials: true, maxAge: 600}
    backendRefs: [{name: web, port: 80}]
`, &configv1.Route{Matches: prefix("/"), Backends: []*configv1.Backend{web}, Cors: &configv1.CorsPolicy{
		AllowOriginsExact: []string{"https://app.example.com"}, AllowMethods: []string{"GET", "POST"}, AllowHeaders: []string{"x-user"},
		ExposeHeaders: []string{"x-id"}, AllowCredentials: true, MaxAge: durationpb.New(10 * time.Minute)}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := convertOne(t, webHTTPRoute(t, tc.rules))
			tc.want.Name, tc.want.Ports = "demo/web/0", []uint32{80}
			if len(got) != 1 || !proto.Equal(got[0], tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// TestHTTPRouteFiltersAsVirtualService: an HTTPRoute's filters compile to the very Route
// fields a VirtualService's headers, rewrite and mirror do, so the waypoint's tests of those
// fields (waypoint/internal/proxy traffic_test.go) hold for both.
func TestHTTPRouteFiltersAsVirtualService(t *testing.T) {
	got := convertOne(t, webHTTPRoute(t, `
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: "yes"}], remove: [x-drop]}
    - type: URLRewrite
      urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-shadow, port: 80}, percent: 50}
    backendRefs: [{name: web, port: 80}]
`))[0]
	vs, err := ConvertVirtualService(istioObj[*istioapi.VirtualService](t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /v1}}]
    headers: {request: {set: {x-set: "yes"}, remove: [x-drop]}}
    rewrite: {uri: /api, authority: api.internal}
    mirror: {host: web-shadow, port: {number: 80}}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: web, port: {number: 80}}}]
`), Options{}.WithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	want := vs.Parents["demo/web.demo.svc.cluster.local"][0].Route
	for _, f := range []struct {
		name     string
		got, vsm proto.Message
	}{{"request headers", got.RequestHeaders, want.RequestHeaders}, {"rewrite", got.Rewrite, want.Rewrite}, {"mirror", got.Mirrors[0], want.Mirrors[0]}} {
		if !proto.Equal(f.got, f.vsm) {
			t.Errorf("%s: HTTPRoute %v, VirtualService %v", f.name, f.got, f.vsm)
		}
	}
}

func TestHTTPRouteFilterErrors(t *testing.T) {
	for _, tc := range []struct{ name, rules, field string }{
		{"redirect with both path types", `
  - matches: [{path: {type: PathPrefix, value: /a}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /b, replacePrefixMatch: /c}}
`, "spec.rules[0].filters[0].requestRedirect.path.replacePrefixMatch"},
		{"redirect with backendRefs", `
  - filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters"},
		{"redirect and rewrite", `
  - filters:
    - {type: RequestRedirect, requestRedirect: {hostname: example.com}}
    - {type: URLRewrite, urlRewrite: {hostname: example.org}}
`, "spec.rules[0].filters"},
		{"replacePrefixMatch under an exact match", `
  - matches: [{path: {type: Exact, value: /a}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].matches"},
		{"rewrite path without a slash", `
  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: "b?x=1"}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath"},
		{"redirect status", `
  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]
`, "spec.rules[0].filters[0].requestRedirect.statusCode"},
		{"redirect scheme", `
  - filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]
`, "spec.rules[0].filters[0].requestRedirect.scheme"},
		{"header filter repeated", `
  - filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [b]}}
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[1].type"},
		{"mirror to an unknown backend kind", `
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {group: example.com, kind: Bucket, name: logs}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].requestMirror.backendRef.group"},
		{"mirror without a port", `
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-shadow}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].requestMirror.backendRef.port"},
		{"mirror percent and fraction", `
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, percent: 5, fraction: {numerator: 1}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].requestMirror"},
		{"mirror fraction above one", `
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, fraction: {numerator: 3, denominator: 2}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].requestMirror.fraction"},
		{"cors wildcard host", `
  - filters: [{type: CORS, cors: {allowOrigins: ["https://app.example.com", "https://*.example.com"]}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].cors.allowOrigins[1]"},
		{"cors wildcard method with credentials", `
  - filters: [{type: CORS, cors: {allowOrigins: ["https://app.example.com"], allowCredentials: true, allowMethods: ["*"]}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].cors.allowMethods[0]"},
		{"externalAuth", `
  - filters: [{type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: auth, port: 80}}}]
    backendRefs: [{name: web, port: 80}]
`, "spec.rules[0].filters[0].externalAuth"},
		{"redirect on a backendRef", `
  - backendRefs:
    - name: web
      port: 80
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com}}]
`, "spec.rules[0].backendRefs[0].filters[0].type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ConvertHTTPRoute(webHTTPRoute(t, tc.rules), "cluster.local")
			wantObjErr(t, err, "HTTPRoute", "demo", "web", tc.field)
		})
	}
}

func TestHTTPRouteRegexAndQueryMatches(t *testing.T) {
	got := convertOne(t, webHTTPRoute(t, `
  - matches:
    - path: {type: RegularExpression, value: "/users/[0-9]+"}
      headers: [{type: RegularExpression, name: x-tenant, value: "team-(a|b)"}]
      queryParams:
      - {name: v, value: "2"}
      - {type: RegularExpression, name: id, value: "[a-f0-9]{8}"}
      method: DELETE
    backendRefs: [{name: web, port: 80}]
`))
	want := &configv1.RouteMatch{
		Path:        &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "/users/[0-9]+"}},
		Headers:     []*configv1.HeaderMatch{{Name: "x-tenant", Regex: "team-(a|b)"}},
		QueryParams: []*configv1.QueryMatch{{Name: "v", Value: "2"}, {Name: "id", Regex: "[a-f0-9]{8}"}},
		Method:      "DELETE",
	}
	if !proto.Equal(got[0].Matches[0], want) {
		t.Fatalf("match %v\nwant %v", got[0].Matches[0], want)
	}
}

// TestRegexPrecedence: exact paths, then prefixes, then regular expressions, then the
// catch-all prefix /; equal paths rank by method, headers, then query parameters.
func TestRegexPrecedence(t *testing.T) {
	att, err := ConvertHTTPRoute(webHTTPRoute(t, `
  - name: catch-all
    matches: [{path: {type: PathPrefix, value: /}}]
  - name: regex
    matches: [{path: {type: RegularExpression, value: "/api/v[0-9]+/.*"}}]
  - name: query
    matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: debug, value: "1"}]}]
  - name: prefix
    matches: [{path: {type: PathPrefix, value: /api}}]
  - name: exact
    matches: [{path: {type: Exact, value: /api/v1/x}}]
`), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range BuildRouteConfig("web", "demo", att).Routes {
		names = append(names, r.Name)
	}
	if got, want := strings.Join(names, " "), "exact query prefix regex catch-all"; got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
}

func TestGRPCRouteFiltersAndRegex(t *testing.T) {
	var r gatewayv1.GRPCRoute
	if err := yaml.UnmarshalStrict([]byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
  - matches:
    - method: {type: RegularExpression, service: "echo\\.v[0-9]+\\.Echo", method: "Get.*"}
      headers: [{type: RegularExpression, name: x-user, value: "admin-.*"}]
    - method: {method: Watch}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-via, value: mesh}]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-shadow, port: 9090}, percent: 25}
    backendRefs:
    - name: echo
      port: 9090
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [x-internal]}}]
`), &r); err != nil {
		t.Fatal(err)
	}
	att, err := ConvertGRPCRoute(&r, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	e := att[0].Entries
	if len(e) != 2 {
		t.Fatalf("entries %v", e)
	}
	if got := e[0].Route.Matches[0].GetPath().GetRegex(); got != `/(?:echo\.v[0-9]+\.Echo)/(?:Get.*)` {
		t.Errorf("regex method: path %q", got)
	}
	if h := e[0].Route.Matches[0].Headers; len(h) != 1 || h[0].Regex != "admin-.*" {
		t.Errorf("regex header %v", h)
	}
	if got := e[1].Route.Matches[0].GetPath().GetRegex(); got != "/[^/]+/Watch" {
		t.Errorf("method alone: path %q", got)
	}
	rt := e[0].Route
	if rt.RequestHeaders.GetAdd()["x-via"] != "mesh" || len(rt.Mirrors) != 1 || rt.Mirrors[0].Percentage != 25 ||
		rt.Mirrors[0].Hostname != "echo-shadow.demo.svc.cluster.local" || rt.Backends[0].ResponseHeaders.GetRemove()[0] != "x-internal" {
		t.Errorf("filters: %v", rt)
	}
}

// TestHTTPRouteBadFilterKeepsLastGood: an HTTPRoute changed to an invalid filter or regex is
// refused with one error naming the field, and the waypoint's RouteConfig stays as it was.
func TestHTTPRouteBadFilterKeepsLastGood(t *testing.T) {
	good := webHTTPRoute(t, `
  - filters: [{type: URLRewrite, urlRewrite: {hostname: api.internal}}]
    backendRefs: [{name: web, port: 80}]
`)
	x := istioTestIndex(t, good)
	before := routeConfig(x)
	if before == nil || before.Routes[0].GetRewrite().GetAuthority() != "api.internal" {
		t.Fatalf("good route: %v", before)
	}
	for field, rules := range map[string]string{
		"spec.rules[0].matches[0].path.value": `
  - matches: [{path: {type: RegularExpression, value: "/(a"}}]
    backendRefs: [{name: web, port: 80}]
`,
		"spec.rules[0].filters[0].requestMirror.backendRef.kind": `
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {kind: Pod, name: web-0, port: 80}}}]
    backendRefs: [{name: web, port: 80}]
`,
		"spec.rules[0].filters[0].requestRedirect.path.replaceFullPath": `
  - filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /a, replaceFullPath: /b}}}]
`,
	} {
		err := x.Upsert(webHTTPRoute(t, rules))
		wantObjErr(t, err, "HTTPRoute", "demo", "web", field)
		x.Commit()
		if !proto.Equal(routeConfig(x), before) {
			t.Fatalf("%s: the RouteConfig changed to %v; want the last good one", field, routeConfig(x))
		}
		if errs := x.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), field) {
			t.Fatalf("Errors() = %v, want the one naming %s", errs, field)
		}
	}
}

// TestTrafficDocGatewayExamples: every YAML example of docs/traffic.md's "Gateway API filters
// and matches" compiles, so the doc shows what ambit accepts.
func TestTrafficDocGatewayExamples(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/traffic.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Gateway API filters and matches\n")
	if !ok {
		t.Fatal("docs/traffic.md has no section \"Gateway API filters and matches\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := strings.Split(section, "```yaml\n")[1:]
	if len(blocks) < 6 {
		t.Fatalf("%d YAML examples in the section, want one per filter and one for matches", len(blocks))
	}
	for i, b := range blocks {
		b, _, _ = strings.Cut(b, "```")
		var r *gatewayv1.HTTPRoute
		if rules, ok := strings.CutPrefix(b, "  rules:\n"); ok {
			r = webHTTPRoute(t, rules)
		} else {
			r = gatewayRoute(t, b)
		}
		if _, err := ConvertHTTPRoute(r, "cluster.local"); err != nil || len(r.Spec.Rules) == 0 {
			t.Errorf("example %d: %v\n%s", i, err, b)
		}
	}
}

// TestUnresolvedRouteRefs: in force, a route's references to Services that do not exist are
// listed by Index.Partial (the lab's ResolvedRefs) naming the field; the Service created, the
// entry goes.
func TestUnresolvedRouteRefs(t *testing.T) {
	x := istioTestIndex(t, webHTTPRoute(t, `
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-shadow, port: 80}}}]
    backendRefs: [{name: web, port: 80}, {name: web-v9, port: 80}]
`))
	var got []string
	for _, err := range x.Partial() {
		var oe *ObjectError
		if !errors.As(err, &oe) || !oe.Partial {
			t.Fatalf("%v (%T) is not a partial *ObjectError", err, err)
		}
		got = append(got, err.Error())
	}
	want := []string{
		"HTTPRoute demo/web: spec.rules[0].backendRefs[1]: Service demo/web-v9 does not exist",
		"HTTPRoute demo/web: spec.rules[0].filters[0].requestMirror.backendRef: Service demo/web-shadow does not exist",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(x.Errors()) != 0 {
		t.Fatalf("Partial() = %q, Errors() = %v; want %q and no error", got, x.Errors(), want)
	}
	for _, name := range []string{"web-shadow", "web-v9"} {
		if err := x.Upsert(service("demo", name, "", nil, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if p := x.Partial(); len(p) != 0 {
		t.Fatalf("with both Services: %v", p)
	}
}
