package model

import (
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func grpcRoute(name string, rules ...gatewayv1.GRPCRouteRule) *gatewayv1.GRPCRoute {
	return &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
				{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "web", Port: ptr(gatewayv1.PortNumber(9090))},
			}},
			Rules: rules,
		},
	}
}

func grpcBackend(name string, weight int32) gatewayv1.GRPCBackendRef {
	return gatewayv1.GRPCBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(9090))},
		Weight:                 ptr(weight),
	}}
}

// TestConvertGRPCRoute: a method match is the path of the HTTP/2 request carrying the call
// (exact for service and method, a prefix for the service alone); headers match exactly;
// weights carry over; what ambit cannot do is refused naming the field.
func TestConvertGRPCRoute(t *testing.T) {
	exact := gatewayv1.GRPCRouteRule{
		Matches: []gatewayv1.GRPCRouteMatch{{
			Method:  &gatewayv1.GRPCMethodMatch{Service: ptr("grpc.health.v1.Health"), Method: ptr("Check")},
			Headers: []gatewayv1.GRPCHeaderMatch{{Name: "x-canary", Value: "true"}},
		}},
		BackendRefs: []gatewayv1.GRPCBackendRef{grpcBackend("web-v2", 1)},
	}
	service := gatewayv1.GRPCRouteRule{
		Matches:     []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Service: ptr("grpc.health.v1.Health")}}},
		BackendRefs: []gatewayv1.GRPCBackendRef{grpcBackend("web-v1", 90), grpcBackend("web-v2", 10)},
	}
	att, err := ConvertGRPCRoute(grpcRoute("health", exact, service), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if len(att) != 1 || att[0].Parent != "demo/web.demo.svc.cluster.local" || len(att[0].Entries) != 2 {
		t.Fatalf("attached %+v", att)
	}
	e0, e1 := att[0].Entries[0].Route, att[0].Entries[1].Route
	if got := e0.Matches[0].GetPath().GetExact(); got != "/grpc.health.v1.Health/Check" {
		t.Errorf("service and method: path %q", got)
	}
	if h := e0.Matches[0].Headers; len(h) != 1 || h[0].Name != "x-canary" || h[0].Value != "true" {
		t.Errorf("headers %v", h)
	}
	if got := e1.Matches[0].GetPath().GetPrefix(); got != "/grpc.health.v1.Health/" {
		t.Errorf("service alone: prefix %q", got)
	}
	if b := e1.Backends; len(b) != 2 || b[0].Weight != 90 || b[1].Weight != 10 || b[0].Hostname != "web-v1.demo.svc.cluster.local" || b[0].Port != 9090 {
		t.Errorf("backends %v", b)
	}
	if p := e0.Ports; len(p) != 1 || p[0] != 9090 {
		t.Errorf("ports %v", p)
	}

	for _, tc := range []struct {
		name  string
		rule  gatewayv1.GRPCRouteRule
		field string
	}{
		{"invalid regex", gatewayv1.GRPCRouteRule{Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{
			Type: ptr(gatewayv1.GRPCMethodMatchRegularExpression), Service: ptr("a.*"), Method: ptr("Get(")}}}}, "spec.rules[0].matches[0].method.method"},
		{"invalid header regex", gatewayv1.GRPCRouteRule{Matches: []gatewayv1.GRPCRouteMatch{{Headers: []gatewayv1.GRPCHeaderMatch{
			{Type: ptr(gatewayv1.GRPCHeaderMatchRegularExpression), Name: "x-user", Value: "*"}}}}}, "spec.rules[0].matches[0].headers[0].value"},
		{"neither service nor method", gatewayv1.GRPCRouteRule{Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{}}}}, "spec.rules[0].matches[0].method"},
		{"slash in service", gatewayv1.GRPCRouteRule{Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Service: ptr("a/b")}}}}, "spec.rules[0].matches[0].method.service"},
		{"extensionRef", gatewayv1.GRPCRouteRule{Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterExtensionRef,
			ExtensionRef: &gatewayv1.LocalObjectReference{Group: "example.com", Kind: "Lua", Name: "x"}}}}, "spec.rules[0].filters[0].extensionRef"},
		{"an HTTPRoute filter", gatewayv1.GRPCRouteRule{Filters: []gatewayv1.GRPCRouteFilter{{Type: "URLRewrite"}}}, "spec.rules[0].filters[0].type"},
		{"an HTTPRoute filter on a backendRef", gatewayv1.GRPCRouteRule{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: grpcBackend("web-v1", 1).BackendRef,
			Filters: []gatewayv1.GRPCRouteFilter{{Type: "RequestRedirect"}}}}}, "spec.rules[0].backendRefs[0].filters[0].type"},
		{"header filter without its field", gatewayv1.GRPCRouteRule{Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestHeaderModifier}}}, "spec.rules[0].filters[0].requestHeaderModifier"},
		{"mirror on a backendRef", gatewayv1.GRPCRouteRule{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: grpcBackend("web-v1", 1).BackendRef,
			Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestMirror}}}}}, "spec.rules[0].backendRefs[0].filters[0].type"},
		{"backend kind", gatewayv1.GRPCRouteRule{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
			Kind: ptr(gatewayv1.Kind("ConfigMap")), Name: "x"}}}}}, "spec.rules[0].backendRefs[0].kind"},
	} {
		_, err := ConvertGRPCRoute(grpcRoute("bad", tc.rule), "cluster.local")
		if err == nil || !strings.Contains(err.Error(), "GRPCRoute demo/bad: "+tc.field+":") {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
}

// TestIndexGRPCRoute: a GRPCRoute and an HTTPRoute of the same name on one Service both give
// routes to its RouteConfig; deleting the GRPCRoute removes only its routes.
func TestIndexGRPCRoute(t *testing.T) {
	svc := service("demo", "web", "10.96.0.10", map[string]string{LabelUseWaypoint: "wp"}, map[string]string{"app": "web"},
		corev1.ServicePort{Name: "http", Port: 8080}, corev1.ServicePort{Name: "grpc", Port: 9090})
	http := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "health"},
		Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
			{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "web", Port: ptr(gatewayv1.PortNumber(8080))}}},
			Rules: []gatewayv1.HTTPRouteRule{{}}}}
	grpc := grpcRoute("health", gatewayv1.GRPCRouteRule{Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Service: ptr("grpc.health.v1.Health")}}}})
	x, errs := Build(Options{}, []runtime.Object{namespace("demo", nil), svc, http, grpc, waypointGW("demo", "wp", "service", "10.0.3.2")})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	routes := func() []*configv1.Route {
		r := x.For(Proxy{ID: "w", Kind: KindWaypoint, Namespace: "demo", Name: "wp"})[configv1.RouteConfigTypeURL]["demo/web.demo.svc.cluster.local"]
		if r.Message == nil {
			return nil
		}
		return r.Message.(*configv1.RouteConfig).GetRoutes()
	}
	if got := routes(); len(got) != 2 {
		t.Fatalf("routes of web with an HTTPRoute and a GRPCRoute named alike: %v", got)
	}
	if err := x.Delete(grpc); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if got := routes(); len(got) != 1 || got[0].GetMatches()[0].GetPath().GetPrefix() != "/" {
		t.Fatalf("after deleting the GRPCRoute: %v", got)
	}
}
