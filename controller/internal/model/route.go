package model

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// MaxWeight is the largest backendRef weight (Gateway API).
const MaxWeight = 1_000_000

// MaxRetryAttempts bounds retry.attempts so one request cannot fan out without limit.
const MaxRetryAttempts = 10

// AttachedRoutes are the routes one HTTPRoute contributes to one parent Service.
type AttachedRoutes struct {
	// Parent is the resource name of the parent Service, "<ns>/<hostname>".
	Parent string
	// ParentNamespace and ParentName name the Service object.
	ParentNamespace, ParentName string
	Entries                     []RouteEntry
}

// RouteEntry is one (rule, match) pair of an HTTPRoute, with what Gateway API precedence
// sorts it by.
type RouteEntry struct {
	Route   *configv1.Route
	created time.Time
	route   string // ns/name of the HTTPRoute
	rule    int
	match   int
}

// ConvertHTTPRoute validates an HTTPRoute and splits it into the routes it gives each of its
// GAMMA parents (parentRefs of kind Service in the core group). Each (rule, match) pair
// becomes one Route with one match so that routes from every HTTPRoute of a Service can be
// sorted by Gateway API match precedence. Parents of other kinds are ignored.
func ConvertHTTPRoute(r *gatewayv1.HTTPRoute, domain string) ([]AttachedRoutes, error) {
	const kind = "HTTPRoute"
	bad := func(field, format string, args ...any) error {
		return objErr(kind, r.Namespace, r.Name, field, format, args...)
	}
	fault, err := routeFault(r.Annotations)
	if err != nil {
		e := err.(*fieldErr)
		return nil, bad(e.field, "%w", e.err)
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
			f := fmt.Sprintf("%s.backendRefs[%d]", base, j)
			be, err := convertBackend(b.BackendRef, len(b.Filters) > 0, r.Namespace, domain)
			if err != nil {
				e := err.(*fieldErr)
				return nil, bad(f+e.field, "%w", e.err)
			}
			backends = append(backends, be)
		}
		var timeouts *configv1.Timeouts
		if t := rule.Timeouts; t != nil {
			req, err := duration(t.Request)
			if err != nil {
				return nil, bad(base+".timeouts.request", "%w", err)
			}
			be, err := duration(t.BackendRequest)
			if err != nil {
				return nil, bad(base+".timeouts.backendRequest", "%w", err)
			}
			if req > 0 && be > req {
				return nil, bad(base+".timeouts.backendRequest", "%s exceeds request timeout %s", be, req)
			}
			if req > 0 || be > 0 {
				timeouts = &configv1.Timeouts{}
				if req > 0 {
					timeouts.Request = durationpb.New(req)
				}
				if be > 0 {
					timeouts.BackendRequest = durationpb.New(be)
				}
			}
		}
		var retry *configv1.Retry
		if rt := rule.Retry; rt != nil {
			retry = &configv1.Retry{}
			for k, c := range rt.Codes {
				if c < 400 || c > 599 {
					return nil, bad(fmt.Sprintf("%s.retry.codes[%d]", base, k), "%d is not in [400, 599]", c)
				}
				retry.Codes = append(retry.Codes, uint32(c))
			}
			if rt.Attempts != nil {
				if *rt.Attempts < 0 || *rt.Attempts > MaxRetryAttempts {
					return nil, bad(base+".retry.attempts", "%d is not in [0, %d]", *rt.Attempts, MaxRetryAttempts)
				}
				retry.Attempts = uint32(*rt.Attempts)
			}
			d, err := duration(rt.Backoff)
			if err != nil {
				return nil, bad(base+".retry.backoff", "%w", err)
			}
			if d > 0 {
				retry.Backoff = durationpb.New(d)
			}
		}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for k, m := range matches {
			f := fmt.Sprintf("%s.matches[%d]", base, k)
			rm, err := convertMatch(m)
			if err != nil {
				e := err.(*fieldErr)
				return nil, bad(f+e.field, "%w", e.err)
			}
			entries = append(entries, RouteEntry{
				Route:   &configv1.Route{Name: name, Matches: []*configv1.RouteMatch{rm}, Backends: backends, Timeouts: timeouts, Retry: retry, Fault: fault},
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

// ruleName checks what HTTPRoute and GRPCRoute rules have alike and ambit refuses (filters,
// session persistence), and names the rule: its name, else <namespace>/<route>/<index>.
func ruleName(ns, route string, i int, name *gatewayv1.SectionName, filters, sessionPersistence bool) (string, *fieldErr) {
	if filters {
		return "", &fieldErr{".filters", fmt.Errorf("filters are not supported")}
	}
	if sessionPersistence {
		return "", &fieldErr{".sessionPersistence", fmt.Errorf("not supported")}
	}
	if name != nil && *name != "" {
		return string(*name), nil
	}
	return fmt.Sprintf("%s/%s/%d", ns, route, i), nil
}

// convertBackend is one backendRef of a route rule (HTTPRoute's or GRPCRoute's): a Service,
// by default of the route's namespace, with its port and weight. Errors are *fieldErr relative
// to the backendRef.
func convertBackend(b gatewayv1.BackendRef, filters bool, routeNS, domain string) (*configv1.Backend, error) {
	if b.Group != nil && *b.Group != "" && *b.Group != "core" {
		return nil, &fieldErr{".group", fmt.Errorf("%q: only Services are supported", *b.Group)}
	}
	if b.Kind != nil && *b.Kind != "Service" {
		return nil, &fieldErr{".kind", fmt.Errorf("%q: only Services are supported", *b.Kind)}
	}
	if filters {
		return nil, &fieldErr{".filters", fmt.Errorf("filters are not supported")}
	}
	ns := routeNS
	if b.Namespace != nil && *b.Namespace != "" {
		ns = string(*b.Namespace)
	}
	be := &configv1.Backend{Hostname: Hostname(string(b.Name), ns, domain), Weight: 1}
	if b.Port != nil {
		if *b.Port < 1 || *b.Port > 65535 {
			return nil, &fieldErr{".port", fmt.Errorf("%d out of range", *b.Port)}
		}
		be.Port = uint32(*b.Port)
	}
	if b.Weight != nil {
		if *b.Weight < 0 || *b.Weight > MaxWeight {
			return nil, &fieldErr{".weight", fmt.Errorf("%d is not in [0, %d]", *b.Weight, MaxWeight)}
		}
		be.Weight = uint32(*b.Weight)
	}
	return be, nil
}

// attach gives the entries of a route to each of its GAMMA parents (parentRefs of kind
// Service in the core group), restricted to the parentRef's port; other parents are ignored.
func attach(parents []gatewayv1.ParentReference, entries []RouteEntry, routeNS, domain string) ([]AttachedRoutes, error) {
	var out []AttachedRoutes
	for i, p := range parents {
		if p.Kind == nil || *p.Kind != "Service" || (p.Group != nil && *p.Group != "" && *p.Group != "core") {
			continue
		}
		ns := routeNS
		if p.Namespace != nil && *p.Namespace != "" {
			ns = string(*p.Namespace)
		}
		var ports []uint32
		if p.Port != nil {
			if *p.Port < 1 || *p.Port > 65535 {
				return nil, &fieldErr{fmt.Sprintf("spec.parentRefs[%d].port", i), fmt.Errorf("%d out of range", *p.Port)}
			}
			ports = []uint32{uint32(*p.Port)}
		}
		ar := AttachedRoutes{Parent: ServiceName(string(p.Name), ns, domain), ParentNamespace: ns, ParentName: string(p.Name)}
		for _, e := range entries {
			e.Route = cloneRoute(e.Route)
			e.Route.Ports = ports
			ar.Entries = append(ar.Entries, e)
		}
		out = append(out, ar)
	}
	return out, nil
}

func cloneRoute(r *configv1.Route) *configv1.Route {
	return &configv1.Route{Name: r.Name, Matches: r.Matches, Backends: r.Backends, Timeouts: r.Timeouts, Retry: r.Retry, Fault: r.Fault}
}

type fieldErr struct {
	field string
	err   error
}

func (e *fieldErr) Error() string { return e.field + ": " + e.err.Error() }

func convertMatch(m gatewayv1.HTTPRouteMatch) (*configv1.RouteMatch, error) {
	out := &configv1.RouteMatch{}
	typ, val := gatewayv1.PathMatchPathPrefix, "/"
	if m.Path != nil {
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			val = *m.Path.Value
		}
	}
	if len(val) == 0 || val[0] != '/' {
		return nil, &fieldErr{".path.value", fmt.Errorf("%q does not start with /", val)}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: val}}
	case gatewayv1.PathMatchPathPrefix:
		out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: val}}
	default:
		return nil, &fieldErr{".path.type", fmt.Errorf("%q is not supported (Exact, PathPrefix)", typ)}
	}
	for i, h := range m.Headers {
		if h.Type != nil && *h.Type != gatewayv1.HeaderMatchExact {
			return nil, &fieldErr{fmt.Sprintf(".headers[%d].type", i), fmt.Errorf("%q is not supported (Exact)", *h.Type)}
		}
		if h.Name == "" {
			return nil, &fieldErr{fmt.Sprintf(".headers[%d].name", i), fmt.Errorf("empty")}
		}
		out.Headers = append(out.Headers, &configv1.HeaderMatch{Name: string(h.Name), Value: h.Value})
	}
	if len(m.QueryParams) > 0 {
		return nil, &fieldErr{".queryParams", fmt.Errorf("query parameter matches are not supported")}
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	return out, nil
}

// duration parses a Gateway API duration; nil and "0s" mean unset (0).
func duration(d *gatewayv1.Duration) (time.Duration, error) {
	if d == nil || *d == "" {
		return 0, nil
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: %w", string(*d), err)
	}
	if v < 0 {
		return 0, fmt.Errorf("negative duration %q", string(*d))
	}
	return v, nil
}

// BuildRouteConfig merges the routes every HTTPRoute attaches to one Service into its
// RouteConfig, sorted by Gateway API precedence: exact path before prefix, longer path first,
// a method match first, more header matches first, then the oldest HTTPRoute, then by
// namespace/name, then rule and match order.
func BuildRouteConfig(hostname, namespace string, attached []AttachedRoutes) *configv1.RouteConfig {
	var all []RouteEntry
	for _, a := range attached {
		all = append(all, a.Entries...)
	}
	slices.SortStableFunc(all, compareEntries)
	out := &configv1.RouteConfig{Hostname: hostname, Namespace: namespace}
	for _, e := range all {
		out.Routes = append(out.Routes, e.Route)
	}
	return out
}

func compareEntries(a, b RouteEntry) int {
	ma, mb := a.Route.Matches[0], b.Route.Matches[0]
	ea, eb := ma.GetPath().GetExact() != "", mb.GetPath().GetExact() != ""
	if ea != eb {
		if ea {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(pathLen(mb), pathLen(ma)); c != 0 {
		return c
	}
	if (ma.Method != "") != (mb.Method != "") {
		if ma.Method != "" {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(len(mb.Headers), len(ma.Headers)); c != 0 {
		return c
	}
	if c := a.created.Compare(b.created); c != 0 {
		return c
	}
	if c := cmp.Compare(a.route, b.route); c != 0 {
		return c
	}
	if c := cmp.Compare(a.rule, b.rule); c != 0 {
		return c
	}
	return cmp.Compare(a.match, b.match)
}

func pathLen(m *configv1.RouteMatch) int {
	return len(m.GetPath().GetExact()) + len(m.GetPath().GetPrefix())
}

// Fault injection for tests and drills: Gateway API has no standard filter for it, so an
// HTTPRoute carries it in annotations that apply to all of its rules:
//
//	fault.ambit.dev/abort: "30% 503"   answer 30% of requests with 503, unforwarded
//	fault.ambit.dev/delay: "10% 2s"    hold 10% of requests for 2 s before routing them
const (
	AnnotationFaultAbort = "fault.ambit.dev/abort"
	AnnotationFaultDelay = "fault.ambit.dev/delay"
)

// routeFault reads the fault annotations; nil when there are none.
func routeFault(ann map[string]string) (*configv1.Fault, error) {
	var f *configv1.Fault
	parse := func(key string) (float64, string, error) {
		pct, rest, ok := strings.Cut(strings.TrimSpace(ann[key]), " ")
		p, err := strconv.ParseFloat(strings.TrimSuffix(pct, "%"), 64)
		if !ok || !strings.HasSuffix(pct, "%") || err != nil || p < 0 || p > 100 {
			return 0, "", &fieldErr{"metadata.annotations[" + key + "]", fmt.Errorf("%q: want \"<percent>%% <value>\" with a percent in [0, 100]", ann[key])}
		}
		return p, strings.TrimSpace(rest), nil
	}
	if _, ok := ann[AnnotationFaultAbort]; ok {
		p, v, err := parse(AnnotationFaultAbort)
		if err != nil {
			return nil, err
		}
		code, err := strconv.Atoi(v)
		if err != nil || code < 200 || code > 599 {
			return nil, &fieldErr{"metadata.annotations[" + AnnotationFaultAbort + "]", fmt.Errorf("status %q is not an HTTP status in [200, 599]", v)}
		}
		f = &configv1.Fault{Abort: &configv1.Fault_Abort{Percentage: p, Status: uint32(code)}}
	}
	if _, ok := ann[AnnotationFaultDelay]; ok {
		p, v, err := parse(AnnotationFaultDelay)
		if err != nil {
			return nil, err
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > time.Hour {
			return nil, &fieldErr{"metadata.annotations[" + AnnotationFaultDelay + "]", fmt.Errorf("delay %q is not a duration in (0, 1h]", v)}
		}
		if f == nil {
			f = &configv1.Fault{}
		}
		f.Delay = &configv1.Fault_Delay{Percentage: p, Delay: durationpb.New(d)}
	}
	return f, nil
}
