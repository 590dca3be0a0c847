package model

import (
	"fmt"
	"maps"
	"slices"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ServiceRef is a route's reference to a backend, a backendRef's or a mirror's, with the
// field path that holds it.
type ServiceRef struct {
	Field string
	gatewayv1.BackendObjectReference
}

// HTTPRouteRefs are r's references to backends: each rule's backendRefs, then its mirrors.
func HTTPRouteRefs(r *gatewayv1.HTTPRoute) []ServiceRef {
	var out []ServiceRef
	for i, rule := range r.Spec.Rules {
		out = append(out, ruleRefs(i, len(rule.BackendRefs), func(j int) gatewayv1.BackendObjectReference { return rule.BackendRefs[j].BackendObjectReference },
			len(rule.Filters), func(k int) *gatewayv1.HTTPRequestMirrorFilter { return rule.Filters[k].RequestMirror })...)
	}
	return out
}

// GRPCRouteRefs are r's references to backends: each rule's backendRefs, then its mirrors.
func GRPCRouteRefs(r *gatewayv1.GRPCRoute) []ServiceRef {
	var out []ServiceRef
	for i, rule := range r.Spec.Rules {
		out = append(out, ruleRefs(i, len(rule.BackendRefs), func(j int) gatewayv1.BackendObjectReference { return rule.BackendRefs[j].BackendObjectReference },
			len(rule.Filters), func(k int) *gatewayv1.HTTPRequestMirrorFilter { return rule.Filters[k].RequestMirror })...)
	}
	return out
}

// ruleRefs are the references of rule i: its n backendRefs, then the backends of those of
// its m filters that are mirrors (mirror returns nil for another filter).
func ruleRefs(i, n int, backend func(j int) gatewayv1.BackendObjectReference, m int, mirror func(k int) *gatewayv1.HTTPRequestMirrorFilter) []ServiceRef {
	var out []ServiceRef
	for j := range n {
		out = append(out, ServiceRef{fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, j), backend(j)})
	}
	for k := range m {
		if f := mirror(k); f != nil {
			out = append(out, ServiceRef{fmt.Sprintf("spec.rules[%d].filters[%d].requestMirror.backendRef", i, k), f.BackendRef})
		}
	}
	return out
}

// unresolved are the references of route k (kind, refs) to Services that do not exist, as
// errors with Partial set: the route is in force, but a backend's share of its requests is
// answered 503 and a mirror's copies fail. References to other kinds are refused when the
// route is converted.
func (x *Index) unresolved(k key, r routeObj) []error {
	var out []error
	for _, ref := range r.refs {
		ns := k.ns
		if ref.Namespace != nil && *ref.Namespace != "" {
			ns = string(*ref.Namespace)
		}
		if x.services[ns][string(ref.Name)] == nil {
			e := objErr(r.kind, k.ns, r.name, ref.Field, "Service %s/%s does not exist", ns, ref.Name)
			e.Partial = true
			out = append(out, e)
		}
	}
	return out
}

// unresolvedRefs lists unresolved for every route, in the order of their keys.
func (x *Index) unresolvedRefs() []error {
	var out []error
	for _, k := range slices.SortedFunc(maps.Keys(x.routes), func(a, b key) int { return compareStrings(a.String(), b.String()) }) {
		out = append(out, x.unresolved(k, x.routes[k])...)
	}
	return out
}
