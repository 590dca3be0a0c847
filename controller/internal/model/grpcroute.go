package model

import (
	"fmt"
	"strings"

	configv1 "ambit.dev/proto/config/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ConvertGRPCRoute validates a GRPCRoute and splits it, as ConvertHTTPRoute does an HTTPRoute,
// into the routes it gives each GAMMA parent. A gRPC call is an HTTP/2 POST to
// /<service>/<method>, so a method match becomes a path match — service and method: the exact
// path; service alone: the prefix /<service>/ — and the waypoint routes gRPC with the same
// RouteConfig as HTTP. Header matches are exact; regular expressions, filters and session
// persistence are refused, naming the field.
func ConvertGRPCRoute(r *gatewayv1.GRPCRoute, domain string) ([]AttachedRoutes, error) {
	const kind = "GRPCRoute"
	bad := func(field, format string, args ...any) error {
		return objErr(kind, r.Namespace, r.Name, field, format, args...)
	}
	var entries []RouteEntry
	for i, rule := range r.Spec.Rules {
		base := fmt.Sprintf("spec.rules[%d]", i)
		name, ferr := ruleName(r.Namespace, r.Name, i, rule.Name, len(rule.Filters) > 0, rule.SessionPersistence != nil)
		if ferr != nil {
			return nil, bad(base+ferr.field, "%w", ferr.err)
		}
		var backends []*configv1.Backend
		for j, b := range rule.BackendRefs {
			be, err := convertBackend(b.BackendRef, len(b.Filters) > 0, r.Namespace, domain)
			if err != nil {
				e := err.(*fieldErr)
				return nil, bad(fmt.Sprintf("%s.backendRefs[%d]%s", base, j, e.field), "%w", e.err)
			}
			backends = append(backends, be)
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
			entries = append(entries, RouteEntry{
				Route:   &configv1.Route{Name: name, Matches: []*configv1.RouteMatch{rm}, Backends: backends},
				created: r.CreationTimestamp.Time,
				route:   r.Namespace + "/" + r.Name,
				rule:    i,
				match:   k,
			})
		}
	}
	out, err := attach(r.Spec.ParentRefs, entries, r.Namespace, domain)
	if err != nil {
		e := err.(*fieldErr)
		return nil, bad(e.field, "%w", e.err)
	}
	return out, nil
}

// convertGRPCMatch turns a GRPCRoute match into the path and header match of the HTTP/2
// request that carries the call.
func convertGRPCMatch(m gatewayv1.GRPCRouteMatch) (*configv1.RouteMatch, error) {
	out := &configv1.RouteMatch{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "/"}}}
	if mm := m.Method; mm != nil {
		if mm.Type != nil && *mm.Type != gatewayv1.GRPCMethodMatchExact {
			return nil, &fieldErr{".method.type", fmt.Errorf("%q is not supported (Exact)", *mm.Type)}
		}
		svc, method := deref(mm.Service), deref(mm.Method)
		for field, v := range map[string]string{".method.service": svc, ".method.method": method} {
			if strings.ContainsAny(v, "/ ") {
				return nil, &fieldErr{field, fmt.Errorf("%q holds a / or a space", v)}
			}
		}
		switch {
		case svc != "" && method != "":
			out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/" + svc + "/" + method}}
		case svc != "":
			out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "/" + svc + "/"}}
		case method != "":
			return nil, &fieldErr{".method.service", fmt.Errorf("a method without its service is not supported (it needs a regular expression)")}
		default:
			return nil, &fieldErr{".method", fmt.Errorf("neither service nor method")}
		}
	}
	for i, h := range m.Headers {
		if h.Type != nil && *h.Type != gatewayv1.GRPCHeaderMatchExact {
			return nil, &fieldErr{fmt.Sprintf(".headers[%d].type", i), fmt.Errorf("%q is not supported (Exact)", *h.Type)}
		}
		if h.Name == "" {
			return nil, &fieldErr{fmt.Sprintf(".headers[%d].name", i), fmt.Errorf("empty")}
		}
		out.Headers = append(out.Headers, &configv1.HeaderMatch{Name: string(h.Name), Value: h.Value})
	}
	return out, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
