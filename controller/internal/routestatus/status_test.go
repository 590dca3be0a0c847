package routestatus

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func ptr[T any](v T) *T { return &v }

func route(backends ...string) *gatewayv1.HTTPRoute {
	r := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "split", Generation: 3}}
	r.Spec.ParentRefs = []gatewayv1.ParentReference{
		{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "web", Port: ptr(gatewayv1.PortNumber(80))},
		{Name: "some-gateway"}, // a Gateway: not ambit's to answer
	}
	var refs []gatewayv1.HTTPBackendRef
	for _, b := range backends {
		refs = append(refs, gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
			Name: gatewayv1.ObjectName(b), Port: ptr(gatewayv1.PortNumber(80))}}})
	}
	r.Spec.Rules = []gatewayv1.HTTPRouteRule{{BackendRefs: refs}}
	return r
}

func services(names ...string) Lookup {
	return func(ns, name string) bool {
		for _, n := range names {
			if ns+"/"+name == n {
				return true
			}
		}
		return false
	}
}

// ours returns ambit's one entry's conditions by type.
func ours(t *testing.T, ps []gatewayv1.RouteParentStatus) map[string]metav1.Condition {
	t.Helper()
	var out map[string]metav1.Condition
	for _, p := range ps {
		if p.ControllerName != ControllerName {
			continue
		}
		if out != nil {
			t.Fatalf("two entries of ambit's: %+v", ps)
		}
		if p.ParentRef.Name != "web" {
			t.Fatalf("entry for parent %s", p.ParentRef.Name)
		}
		out = map[string]metav1.Condition{}
		for _, c := range p.Conditions {
			out[c.Type] = c
		}
	}
	if out == nil {
		t.Fatalf("no entry of ambit's: %+v", ps)
	}
	return out
}

func TestParents(t *testing.T) {
	now := metav1.NewTime(time.Unix(1000, 0))
	all := services("demo/web", "demo/web-v1", "demo/web-v2")
	for _, tc := range []struct {
		name                      string
		r                         *gatewayv1.HTTPRoute
		svcs                      Lookup
		accepted, resolved        metav1.ConditionStatus
		acceptReason, resolveWhy  string
		acceptMsg, resolveMsgPart string
	}{
		{"valid", route("web-v1", "web-v2"), all, "True", "True", "Accepted", "ResolvedRefs", "", ""},
		{"a backend missing", route("web-v1", "web-v3"), all, "True", "False", "Accepted", "BackendNotFound", "", "spec.rules[0].backendRefs[1]: Service demo/web-v3"},
		{"parent missing", route("web-v1"), services("demo/web-v1"), "False", "True", "NoMatchingParent", "ResolvedRefs", "parent Service demo/web does not exist", ""},
		{"invalid field", func() *gatewayv1.HTTPRoute {
			r := route("web-v1")
			r.Spec.Rules[0].Retry = &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{700}}
			return r
		}(), all, "False", "True", "UnsupportedValue", "ResolvedRefs", "spec.rules[0].retry.codes[0]", ""},
		{"a backend of another kind", func() *gatewayv1.HTTPRoute {
			r := route("web-v1")
			r.Spec.Rules[0].BackendRefs[0].Kind = ptr(gatewayv1.Kind("ConfigMap"))
			return r
		}(), all, "False", "False", "UnsupportedValue", "InvalidKind", "only Services are supported", "kind ConfigMap is not a Service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Parents(HTTPRoute(tc.r, "cluster.local"), tc.svcs, now)
			c := ours(t, got)
			a, res := c[Accepted], c[ResolvedRefs]
			if a.Status != tc.accepted || a.Reason != tc.acceptReason || !strings.Contains(a.Message, tc.acceptMsg) || a.ObservedGeneration != 3 {
				t.Errorf("Accepted = %+v, want %s %s %q", a, tc.accepted, tc.acceptReason, tc.acceptMsg)
			}
			if res.Status != tc.resolved || res.Reason != tc.resolveWhy || !strings.Contains(res.Message, tc.resolveMsgPart) {
				t.Errorf("ResolvedRefs = %+v, want %s %s %q", res, tc.resolved, tc.resolveWhy, tc.resolveMsgPart)
			}
		})
	}
}

// TestParentsKeepsOthersAndTimes: another controller's entry stays as it is, and a condition
// that says what it said keeps its lastTransitionTime (no write for a resync).
func TestParentsKeepsOthersAndTimes(t *testing.T) {
	all := services("demo/web", "demo/web-v1")
	r := route("web-v1")
	other := gatewayv1.RouteParentStatus{ParentRef: gatewayv1.ParentReference{Name: "some-gateway"}, ControllerName: "example.net/gateway",
		Conditions: []metav1.Condition{{Type: Accepted, Status: "True", Reason: "Accepted"}}}
	r.Status.Parents = []gatewayv1.RouteParentStatus{other}
	first := Parents(HTTPRoute(r, "cluster.local"), all, metav1.NewTime(time.Unix(1000, 0)))
	if len(first) != 2 || first[0].ControllerName != "example.net/gateway" {
		t.Fatalf("parents %+v: the other controller's entry not kept first", first)
	}
	r.Status.Parents = first
	again := Parents(HTTPRoute(r, "cluster.local"), all, metav1.NewTime(time.Unix(2000, 0)))
	if !Equal(first, again) || ours(t, again)[Accepted].LastTransitionTime.Unix() != 1000 {
		t.Fatalf("the same status again changed: %+v → %+v", first, again)
	}
	// A change moves the time of the condition that changed only.
	changed := Parents(HTTPRoute(r, "cluster.local"), services("demo/web"), metav1.NewTime(time.Unix(3000, 0)))
	c := ours(t, changed)
	if Equal(first, changed) || c[ResolvedRefs].LastTransitionTime.Unix() != 3000 || c[Accepted].LastTransitionTime.Unix() != 1000 {
		t.Fatalf("after the backend went: %+v", c)
	}
}

func grpcRoute(backends ...string) *gatewayv1.GRPCRoute {
	r := &gatewayv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "echo", Generation: 3}}
	r.Spec.ParentRefs = route().Spec.ParentRefs
	var refs []gatewayv1.GRPCBackendRef
	for _, b := range backends {
		refs = append(refs, gatewayv1.GRPCBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
			Name: gatewayv1.ObjectName(b), Port: ptr(gatewayv1.PortNumber(80))}}})
	}
	r.Spec.Rules = []gatewayv1.GRPCRouteRule{{BackendRefs: refs}}
	return r
}

func mirrorTo(name string) *gatewayv1.HTTPRequestMirrorFilter {
	return &gatewayv1.HTTPRequestMirrorFilter{BackendRef: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(80))}}
}

// TestParentsGRPCRouteAndMirrors: a GRPCRoute gets the conditions an HTTPRoute does, and a
// mirror's backend counts as a reference: missing, it turns ResolvedRefs false naming the
// filter.
func TestParentsGRPCRouteAndMirrors(t *testing.T) {
	now := metav1.NewTime(time.Unix(1000, 0))
	all := services("demo/web", "demo/web-v1", "demo/web-shadow")
	withMirror := route("web-v1")
	withMirror.Spec.Rules[0].Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: mirrorTo("web-gone")}}
	grpcMirror := grpcRoute("web-v1")
	grpcMirror.Spec.Rules[0].Filters = []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestMirror, RequestMirror: mirrorTo("web-gone")}}
	grpcBad := grpcRoute("web-v1")
	grpcBad.Spec.Rules[0].Matches = []gatewayv1.GRPCRouteMatch{{Headers: []gatewayv1.GRPCHeaderMatch{
		{Type: ptr(gatewayv1.GRPCHeaderMatchRegularExpression), Name: "x-user", Value: "(admin"}}}}
	for _, tc := range []struct {
		name               string
		r                  Route
		accepted, resolved metav1.ConditionStatus
		msg                string
	}{
		{"GRPCRoute valid", GRPCRoute(grpcRoute("web-v1"), "cluster.local"), "True", "True", ""},
		{"GRPCRoute backend missing", GRPCRoute(grpcRoute("web-v9"), "cluster.local"), "True", "False", "spec.rules[0].backendRefs[0]: Service demo/web-v9"},
		{"GRPCRoute invalid regex", GRPCRoute(grpcBad, "cluster.local"), "False", "True", "spec.rules[0].matches[0].headers[0].value"},
		{"GRPCRoute mirror missing", GRPCRoute(grpcMirror, "cluster.local"), "True", "False", "spec.rules[0].filters[0].requestMirror.backendRef: Service demo/web-gone"},
		{"HTTPRoute mirror missing", HTTPRoute(withMirror, "cluster.local"), "True", "False", "spec.rules[0].filters[0].requestMirror.backendRef: Service demo/web-gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ours(t, Parents(tc.r, all, now))
			a, res := c[Accepted], c[ResolvedRefs]
			if a.Status != tc.accepted || res.Status != tc.resolved || !strings.Contains(a.Message+res.Message, tc.msg) || a.ObservedGeneration != 3 {
				t.Errorf("Accepted %+v\nResolvedRefs %+v\nwant %s, %s, naming %q", a, res, tc.accepted, tc.resolved, tc.msg)
			}
		})
	}
}
