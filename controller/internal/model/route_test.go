package model

import (
	"strings"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func httpRoute(ns, name string, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: meta(ns, name, nil),
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
				{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "reviews", Port: ptr(gatewayv1.PortNumber(9080))},
				{Name: "some-gateway"}, // a Gateway parent: not ours
			}},
			Rules: rules,
		},
	}
}

func backend(name string, port int32, weight *int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(port))},
		Weight:                 weight,
	}}
}

func TestConvertHTTPRoute(t *testing.T) {
	d := func(s string) *gatewayv1.Duration { return ptr(gatewayv1.Duration(s)) }
	r := httpRoute("shop", "reviews", gatewayv1.HTTPRouteRule{
		Matches: []gatewayv1.HTTPRouteMatch{
			{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchExact), Value: ptr("/v2")}, Method: ptr(gatewayv1.HTTPMethodGet)},
			{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "x-canary", Value: "1"}}},
		},
		BackendRefs: []gatewayv1.HTTPBackendRef{backend("reviews-v1", 9080, ptr(int32(90))), backend("reviews-v2", 9080, ptr(int32(10)))},
		Timeouts:    &gatewayv1.HTTPRouteTimeouts{Request: d("10s"), BackendRequest: d("2s")},
		Retry:       &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503, 502}, Attempts: ptr(3), Backoff: d("100ms")},
	})
	got, err := ConvertHTTPRoute(r, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Parent != "shop/reviews.shop.svc.cluster.local" || len(got[0].Entries) != 2 {
		t.Fatalf("got %+v", got)
	}
	backends := []*configv1.Backend{
		{Hostname: "reviews-v1.shop.svc.cluster.local", Port: 9080, Weight: 90},
		{Hostname: "reviews-v2.shop.svc.cluster.local", Port: 9080, Weight: 10},
	}
	want0 := &configv1.Route{
		Name:     "shop/reviews/0",
		Ports:    []uint32{9080},
		Matches:  []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/v2"}}, Method: "GET"}},
		Backends: backends,
		Timeouts: &configv1.Timeouts{Request: durationpb.New(10 * time.Second), BackendRequest: durationpb.New(2 * time.Second)},
		Retry:    &configv1.Retry{Codes: []uint32{503, 502}, Attempts: 3, Backoff: durationpb.New(100 * time.Millisecond)},
	}
	if !proto.Equal(got[0].Entries[0].Route, want0) {
		t.Fatalf("route 0 = %v\nwant %v", got[0].Entries[0].Route, want0)
	}
	m1 := got[0].Entries[1].Route.Matches[0]
	if m1.GetPath().GetPrefix() != "/" || len(m1.Headers) != 1 || m1.Headers[0].Name != "x-canary" {
		t.Fatalf("match 1 = %v", m1)
	}
	// No matches means one match-all; no weight means 1.
	got, err = ConvertHTTPRoute(httpRoute("shop", "r", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("b", 80, nil)}}), "cluster.local")
	if err != nil || got[0].Entries[0].Route.Matches[0].GetPath().GetPrefix() != "/" || got[0].Entries[0].Route.Backends[0].Weight != 1 {
		t.Fatalf("defaults: %+v, %v", got, err)
	}
}

func TestConvertHTTPRouteErrors(t *testing.T) {
	d := func(s string) *gatewayv1.Duration { return ptr(gatewayv1.Duration(s)) }
	ok := []gatewayv1.HTTPBackendRef{backend("b", 80, nil)}
	tests := []struct {
		name  string
		rule  gatewayv1.HTTPRouteRule
		field string
	}{
		{"negative weight", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("a", 80, nil), backend("b", 80, ptr(int32(-1)))}}, "spec.rules[0].backendRefs[1].weight"},
		{"weight too large", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("b", 80, ptr(int32(MaxWeight+1)))}}, "spec.rules[0].backendRefs[0].weight"},
		{"backend kind", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Kind: ptr(gatewayv1.Kind("Pod")), Name: "x"}}}}}, "spec.rules[0].backendRefs[0].kind"},
		{"retry code", gatewayv1.HTTPRouteRule{BackendRefs: ok, Retry: &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503, 200}}}, "spec.rules[0].retry.codes[1]"},
		{"retry attempts", gatewayv1.HTTPRouteRule{BackendRefs: ok, Retry: &gatewayv1.HTTPRouteRetry{Attempts: ptr(-1)}}, "spec.rules[0].retry.attempts"},
		{"retry attempts too many", gatewayv1.HTTPRouteRule{BackendRefs: ok, Retry: &gatewayv1.HTTPRouteRetry{Attempts: ptr(MaxRetryAttempts + 1)}}, "spec.rules[0].retry.attempts"},
		{"retry backoff", gatewayv1.HTTPRouteRule{BackendRefs: ok, Retry: &gatewayv1.HTTPRouteRetry{Backoff: d("soon")}}, "spec.rules[0].retry.backoff"},
		{"request timeout", gatewayv1.HTTPRouteRule{BackendRefs: ok, Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: d("ten")}}, "spec.rules[0].timeouts.request"},
		{"backend timeout above request", gatewayv1.HTTPRouteRule{BackendRefs: ok, Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: d("1s"), BackendRequest: d("2s")}}, "spec.rules[0].timeouts.backendRequest"},
		{"invalid header regex", gatewayv1.HTTPRouteRule{BackendRefs: ok, Matches: []gatewayv1.HTTPRouteMatch{{Headers: []gatewayv1.HTTPHeaderMatch{{Type: ptr(gatewayv1.HeaderMatchRegularExpression), Name: "a", Value: "(unclosed"}}}}}, "spec.rules[0].matches[0].headers[0].value"},
		{"invalid path regex", gatewayv1.HTTPRouteRule{BackendRefs: ok, Matches: []gatewayv1.HTTPRouteMatch{{}, {Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchRegularExpression), Value: ptr("/a(?!b)")}}}}, "spec.rules[0].matches[1].path.value"},
		{"invalid query regex", gatewayv1.HTTPRouteRule{BackendRefs: ok, Matches: []gatewayv1.HTTPRouteMatch{{QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "v", Value: "1"}, {Type: ptr(gatewayv1.QueryParamMatchRegularExpression), Name: "q", Value: "[a-"}}}}}, "spec.rules[0].matches[0].queryParams[1].value"},
		{"query match type", gatewayv1.HTTPRouteRule{BackendRefs: ok, Matches: []gatewayv1.HTTPRouteMatch{{QueryParams: []gatewayv1.HTTPQueryParamMatch{{Type: ptr(gatewayv1.QueryParamMatchType("Prefix")), Name: "q", Value: "a"}}}}}, "spec.rules[0].matches[0].queryParams[0].type"},
		{"regex too long", gatewayv1.HTTPRouteRule{BackendRefs: ok, Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchRegularExpression), Value: ptr("/" + strings.Repeat("a", 1024))}}}}, "spec.rules[0].matches[0].path.value"},
		{"relative path", gatewayv1.HTTPRouteRule{BackendRefs: ok, Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Value: ptr("api")}}}}, "spec.rules[0].matches[0].path.value"},
		{"extensionRef", gatewayv1.HTTPRouteRule{BackendRefs: ok, Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef, ExtensionRef: &gatewayv1.LocalObjectReference{Group: "example.com", Kind: "Lua", Name: "x"}}}}, "spec.rules[0].filters[0].extensionRef"},
		{"filter without its field", gatewayv1.HTTPRouteRule{BackendRefs: ok, Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror}}}, "spec.rules[0].filters[0].requestMirror"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ConvertHTTPRoute(httpRoute("shop", "reviews", tt.rule), "cluster.local")
			wantObjErr(t, err, "HTTPRoute", "shop", "reviews", tt.field)
		})
	}
}

func TestBuildRouteConfigPrecedence(t *testing.T) {
	prefix := func(p string) gatewayv1.HTTPRouteMatch {
		return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchPathPrefix), Value: ptr(p)}}
	}
	b := []gatewayv1.HTTPBackendRef{backend("b", 80, nil)}
	older := httpRoute("shop", "zzz-older", gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{prefix("/")}, BackendRefs: b})
	older.CreationTimestamp = metav1.NewTime(t0)
	newer := httpRoute("shop", "aaa-newer",
		gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{prefix("/"), prefix("/api")}, BackendRefs: b},
		gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchExact), Value: ptr("/")}}}, BackendRefs: b},
		gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{Path: prefix("/api").Path, Method: ptr(gatewayv1.HTTPMethodPost)}}, BackendRefs: b},
		gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{Path: prefix("/api").Path, Method: ptr(gatewayv1.HTTPMethodPost), Headers: []gatewayv1.HTTPHeaderMatch{{Name: "a", Value: "b"}}}}, BackendRefs: b},
	)
	newer.CreationTimestamp = metav1.NewTime(t0.Add(time.Hour))
	var att []AttachedRoutes
	for _, r := range []*gatewayv1.HTTPRoute{newer, older} {
		a, err := ConvertHTTPRoute(r, "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		att = append(att, a...)
	}
	rc := BuildRouteConfig("reviews.shop.svc.cluster.local", "shop", att)
	var names []string
	for _, r := range rc.Routes {
		names = append(names, r.Name)
	}
	want := []string{"shop/aaa-newer/1", "shop/aaa-newer/3", "shop/aaa-newer/2", "shop/aaa-newer/0", "shop/zzz-older/0", "shop/aaa-newer/0"}
	if len(names) != len(want) {
		t.Fatalf("routes %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("routes %v, want %v", names, want)
		}
	}
}

func TestRouteFaultAnnotations(t *testing.T) {
	r := httpRoute("shop", "reviews", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("reviews", 9080, nil)}})
	r.Annotations = map[string]string{AnnotationFaultAbort: "30% 503", AnnotationFaultDelay: "12.5% 2s"}
	out, err := ConvertHTTPRoute(r, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	want := &configv1.Fault{
		Abort: &configv1.Fault_Abort{Percentage: 30, Status: 503},
		Delay: &configv1.Fault_Delay{Percentage: 12.5, Delay: durationpb.New(2 * time.Second)},
	}
	if len(out) != 1 || len(out[0].Entries) != 1 || !proto.Equal(out[0].Entries[0].Route.Fault, want) {
		t.Fatalf("fault = %v, want %v", out, want)
	}
	for _, bad := range []map[string]string{
		{AnnotationFaultAbort: "30 503"},
		{AnnotationFaultAbort: "130% 503"},
		{AnnotationFaultAbort: "30% 99"},
		{AnnotationFaultDelay: "10% forever"},
		{AnnotationFaultDelay: "10%"},
	} {
		r.Annotations = bad
		_, err := ConvertHTTPRoute(r, "cluster.local")
		for k := range bad {
			if err == nil || !strings.Contains(err.Error(), "metadata.annotations["+k+"]") {
				t.Fatalf("%v: err %v, want one naming the annotation", bad, err)
			}
		}
	}
}
