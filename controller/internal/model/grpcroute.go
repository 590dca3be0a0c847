package model

import (
	"fmt"
	"regexp"
	"strings"

	configv1 "ambit.dev/proto/config/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ConvertGRPCRoute validates a GRPCRoute and splits it, as ConvertHTTPRoute does an HTTPRoute,
// into the routes it gives each GAMMA parent. A gRPC call is an HTTP/2 POST to
// /<service>/<method>, so a method match becomes a path match — service and method: the exact
// path; service alone: the prefix /<service>/ — and the waypoint routes gRPC with the same
// RouteConfig as HTTP. Filters are HTTPRoute's (header modifiers, mirrors); ExtensionRef
// and session persistence are refused, naming the field.
func ConvertGRPCRoute(r *gatewayv1.GRPCRoute, domain string) ([]AttachedRoutes, error) {
	const kind = "GRPCRoute"
	bad := func(field, format string, args ...any) error {
		return objErr(kind, r.Namespace, r.Name, field, format, args...)
	}
	var entries []RouteEntry
	for i, rule := range r.Spec.Rules {
		base := fmt.Sprintf("spec.rules[%d]", i)
		rt, ferr := grpcRule(rule, r.Namespace, domain)
		if ferr == nil {
			rt.Name, ferr = ruleName(r.Namespace, r.Name, i, rule.Name, rule.SessionPersistence != nil)
		}
		if ferr != nil {
			return nil, bad(base+ferr.field, "%w", ferr.err)
		}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.GRPCRouteMatch{{}}
		}
		for k, m := range matches {
			rm, err := convertGRPCMatch(m)
			if err != nil {
				e := err.(*fieldErr)
				return nil, bad(fmt.Sprintf("%s.matches[%d]%s", base, k, e.field), "%w", e.err)
			}
			entries = append(entries, newEntry(rt, rm, r.ObjectMeta, i, k))
		}
	}
	out, err := attach(r.Spec.ParentRefs, entries, r.Namespace, domain)
	if err != nil {
		e := err.(*fieldErr)
		return nil, bad(e.field, "%w", e.err)
	}
	return out, nil
}

// grpcRule compiles what a GRPCRoute rule gives each of its matches: backends and filters
// (the HTTPRoute filters GRPCRoute has). Errors are relative to the rule.
func grpcRule(rule gatewayv1.GRPCRouteRule, ns, domain string) (*configv1.Route, *fieldErr) {
	refFilters := make([][]gatewayv1.HTTPRouteFilter, len(rule.BackendRefs))
	for j, b := range rule.BackendRefs {
		f, err := grpcFilters(b.Filters)
		if err != nil {
			return nil, &fieldErr{fmt.Sprintf(".backendRefs[%d]%s", j, err.field), err.err}
		}
		refFilters[j] = f
	}
	filters, err := grpcFilters(rule.Filters)
	if err != nil {
		return nil, err
	}
	rt := &configv1.Route{}
	rt.Backends, err = convertBackendRefs(len(rule.BackendRefs), func(j int) (gatewayv1.BackendRef, []gatewayv1.HTTPRouteFilter) {
		return rule.BackendRefs[j].BackendRef, refFilters[j]
	}, ns, domain)
	if err != nil {
		return nil, err
	}
	if err := routeFilters(filters, nil, len(rule.BackendRefs) > 0, ns, domain, rt); err != nil {
		return nil, err
	}
	return rt, nil
}

// convertGRPCMatch turns a GRPCRoute match into the path and header match of the HTTP/2
// request that carries the call. An exact method match is an exact or prefix path; a
// RegularExpression one a path regex, "/<service>/<method>" with [^/]+ for the part unset.
func convertGRPCMatch(m gatewayv1.GRPCRouteMatch) (*configv1.RouteMatch, error) {
	out := &configv1.RouteMatch{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "/"}}}
	if mm := m.Method; mm != nil {
		p, err := grpcMethodPath(mm)
		if err != nil {
			return nil, err
		}
		out.Path = p
	}
	for i, h := range m.Headers {
		hm, err := valueMatch(fmt.Sprintf(".headers[%d]", i), string(h.Name), h.Value, (*string)(h.Type))
		if err != nil {
			return nil, err
		}
		out.Headers = append(out.Headers, &configv1.HeaderMatch{Name: hm.name, Value: hm.value, Regex: hm.regex})
	}
	return out, nil
}

// grpcMethodPath is the path match of a GRPCRoute method match.
func grpcMethodPath(mm *gatewayv1.GRPCMethodMatch) (*configv1.PathMatch, *fieldErr) {
	svc, method := deref(mm.Service), deref(mm.Method)
	if svc == "" && method == "" {
		return nil, &fieldErr{".method", fmt.Errorf("neither service nor method")}
	}
	if mm.Type != nil && *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression {
		re := "/"
		for _, p := range []struct{ field, v string }{{".method.service", svc}, {".method.method", method}} {
			if p.v == "" {
				p.v = "[^/]+"
			} else if err := checkRegex(p.v, p.field); err != nil {
				return nil, err
			}
			re += "(?:" + p.v + ")/"
		}
		return &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: strings.TrimSuffix(re, "/")}}, nil
	}
	if mm.Type != nil && *mm.Type != gatewayv1.GRPCMethodMatchExact {
		return nil, &fieldErr{".method.type", fmt.Errorf("%q is not supported (Exact, RegularExpression)", *mm.Type)}
	}
	for field, v := range map[string]string{".method.service": svc, ".method.method": method} {
		if strings.ContainsAny(v, "/ ") {
			return nil, &fieldErr{field, fmt.Errorf("%q holds a / or a space", v)}
		}
	}
	switch {
	case svc != "" && method != "":
		return &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/" + svc + "/" + method}}, nil
	case svc != "":
		return &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "/" + svc + "/"}}, nil
	}
	// A method of any service.
	return &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "/[^/]+/" + regexp.QuoteMeta(method)}}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
