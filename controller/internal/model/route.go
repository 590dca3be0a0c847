package model

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
		rt, ferr := httpRule(rule, r.Namespace, domain)
		if ferr == nil {
			rt.Name, ferr = ruleName(r.Namespace, r.Name, i, rule.Name, rule.SessionPersistence != nil)
		}
		if ferr != nil {
			return nil, bad(base+ferr.field, "%w", ferr.err)
		}
		rt.Fault = fault
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for k, m := range matches {
			rm, err := convertMatch(m)
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

// newEntry is the entry of one (rule, match) pair of a route: rt with the one match.
func newEntry(rt *configv1.Route, m *configv1.RouteMatch, meta metav1.ObjectMeta, rule, match int) RouteEntry {
	r := cloneRoute(rt)
	r.Matches = []*configv1.RouteMatch{m}
	return RouteEntry{Route: r, created: meta.CreationTimestamp.Time, route: meta.Namespace + "/" + meta.Name, rule: rule, match: match}
}

// httpRule compiles what an HTTPRoute rule gives each of its matches: backends, filters,
// timeouts and retry. Errors are relative to the rule.
func httpRule(rule gatewayv1.HTTPRouteRule, ns, domain string) (*configv1.Route, *fieldErr) {
	rt := &configv1.Route{}
	var err *fieldErr
	rt.Backends, err = convertBackendRefs(len(rule.BackendRefs), func(j int) (gatewayv1.BackendRef, []gatewayv1.HTTPRouteFilter) {
		return rule.BackendRefs[j].BackendRef, rule.BackendRefs[j].Filters
	}, ns, domain)
	if err != nil {
		return nil, err
	}
	if err := routeFilters(rule.Filters, rule.Matches, len(rule.BackendRefs) > 0, ns, domain, rt); err != nil {
		return nil, err
	}
	if rt.Timeouts, err = ruleTimeouts(rule.Timeouts); err != nil {
		return nil, err
	}
	if rt.Retry, err = ruleRetry(rule.Retry); err != nil {
		return nil, err
	}
	return rt, nil
}

// ruleTimeouts compiles an HTTPRoute rule's timeouts; nil for none.
func ruleTimeouts(t *gatewayv1.HTTPRouteTimeouts) (*configv1.Timeouts, *fieldErr) {
	if t == nil {
		return nil, nil
	}
	req, err := duration(t.Request)
	if err != nil {
		return nil, &fieldErr{".timeouts.request", err}
	}
	be, err := duration(t.BackendRequest)
	if err != nil {
		return nil, &fieldErr{".timeouts.backendRequest", err}
	}
	if req > 0 && be > req {
		return nil, &fieldErr{".timeouts.backendRequest", fmt.Errorf("%s exceeds request timeout %s", be, req)}
	}
	if req == 0 && be == 0 {
		return nil, nil
	}
	out := &configv1.Timeouts{}
	if req > 0 {
		out.Request = durationpb.New(req)
	}
	if be > 0 {
		out.BackendRequest = durationpb.New(be)
	}
	return out, nil
}

// ruleRetry compiles an HTTPRoute rule's retry; nil for none.
func ruleRetry(rt *gatewayv1.HTTPRouteRetry) (*configv1.Retry, *fieldErr) {
	if rt == nil {
		return nil, nil
	}
	retry := &configv1.Retry{}
	for k, c := range rt.Codes {
		if c < 400 || c > 599 {
			return nil, &fieldErr{fmt.Sprintf(".retry.codes[%d]", k), fmt.Errorf("%d is not in [400, 599]", c)}
		}
		retry.Codes = append(retry.Codes, uint32(c))
	}
	if rt.Attempts != nil {
		if *rt.Attempts < 0 || *rt.Attempts > MaxRetryAttempts {
			return nil, &fieldErr{".retry.attempts", fmt.Errorf("%d is not in [0, %d]", *rt.Attempts, MaxRetryAttempts)}
		}
		retry.Attempts = uint32(*rt.Attempts)
	}
	d, err := duration(rt.Backoff)
	if err != nil {
		return nil, &fieldErr{".retry.backoff", err}
	}
	if d > 0 {
		retry.Backoff = durationpb.New(d)
	}
	return retry, nil
}

// ruleName checks what HTTPRoute and GRPCRoute rules have alike and ambit refuses (session
// persistence), and names the rule: its name, else <namespace>/<route>/<index>.
func ruleName(ns, route string, i int, name *gatewayv1.SectionName, sessionPersistence bool) (string, *fieldErr) {
	if sessionPersistence {
		return "", &fieldErr{".sessionPersistence", fmt.Errorf("not supported")}
	}
	if name != nil && *name != "" {
		return string(*name), nil
	}
	return fmt.Sprintf("%s/%s/%d", ns, route, i), nil
}

// convertBackendRefs compiles the n backendRefs of a rule (HTTPRoute's or GRPCRoute's; get
// returns the j-th and its filters). Errors are relative to the rule.
func convertBackendRefs(n int, get func(j int) (gatewayv1.BackendRef, []gatewayv1.HTTPRouteFilter), ns, domain string) ([]*configv1.Backend, *fieldErr) {
	var out []*configv1.Backend
	for j := range n {
		ref, filters := get(j)
		f := fmt.Sprintf(".backendRefs[%d]", j)
		be, err := convertBackend(ref, ns, domain)
		if err != nil {
			e := err.(*fieldErr)
			return nil, &fieldErr{f + e.field, e.err}
		}
		if err := backendFilters(filters, be); err != nil {
			return nil, &fieldErr{f + err.field, err.err}
		}
		out = append(out, be)
	}
	return out, nil
}

// convertBackend is one backendRef of a route rule (HTTPRoute's or GRPCRoute's), or a
// mirror's: a Service, by default of the route's namespace, with its port and weight. Errors
// are *fieldErr relative to the backendRef.
func convertBackend(b gatewayv1.BackendRef, routeNS, domain string) (*configv1.Backend, error) {
	if b.Group != nil && *b.Group != "" && *b.Group != "core" {
		return nil, &fieldErr{".group", fmt.Errorf("%q: only Services are supported", *b.Group)}
	}
	if b.Kind != nil && *b.Kind != "Service" {
		return nil, &fieldErr{".kind", fmt.Errorf("%q: only Services are supported", *b.Kind)}
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

// cloneRoute is a shallow copy of r: its parts are shared, never changed once built.
func cloneRoute(r *configv1.Route) *configv1.Route {
	return &configv1.Route{Name: r.Name, Ports: r.Ports, Matches: r.Matches, Backends: r.Backends, Timeouts: r.Timeouts, Retry: r.Retry, Fault: r.Fault,
		RequestHeaders: r.RequestHeaders, ResponseHeaders: r.ResponseHeaders, Rewrite: r.Rewrite, Redirect: r.Redirect, Mirrors: r.Mirrors, Cors: r.Cors}
}

type fieldErr struct {
	field string
	err   error
}

func (e *fieldErr) Error() string { return e.field + ": " + e.err.Error() }

// convertMatch compiles one HTTPRoute match. Regular expressions are RE2 and match the
// whole path, header value or query parameter value.
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
	if typ != gatewayv1.PathMatchRegularExpression && (len(val) == 0 || val[0] != '/') {
		return nil, &fieldErr{".path.value", fmt.Errorf("%q does not start with /", val)}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: val}}
	case gatewayv1.PathMatchPathPrefix:
		out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: val}}
	case gatewayv1.PathMatchRegularExpression:
		if err := checkRegex(val, ".path.value"); err != nil {
			return nil, err
		}
		out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: val}}
	default:
		return nil, &fieldErr{".path.type", fmt.Errorf("%q is not supported (Exact, PathPrefix, RegularExpression)", typ)}
	}
	for i, h := range m.Headers {
		hm, err := valueMatch(fmt.Sprintf(".headers[%d]", i), string(h.Name), h.Value, (*string)(h.Type))
		if err != nil {
			return nil, err
		}
		out.Headers = append(out.Headers, &configv1.HeaderMatch{Name: hm.name, Value: hm.value, Regex: hm.regex})
	}
	for i, q := range m.QueryParams {
		qm, err := valueMatch(fmt.Sprintf(".queryParams[%d]", i), string(q.Name), q.Value, (*string)(q.Type))
		if err != nil {
			return nil, err
		}
		out.QueryParams = append(out.QueryParams, &configv1.QueryMatch{Name: qm.name, Value: qm.value, Regex: qm.regex})
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	return out, nil
}

// matchValue is a header or query parameter match: an exact value or a regular expression.
type matchValue struct{ name, value, regex string }

// valueMatch checks a header or query parameter match (f is its field path) of type typ
// (Exact when nil, or RegularExpression; Gateway API spells both alike for headers, query
// parameters and GRPCRoute's headers).
func valueMatch(f, name, value string, typ *string) (matchValue, *fieldErr) {
	if name == "" {
		return matchValue{}, &fieldErr{f + ".name", fmt.Errorf("empty")}
	}
	switch t := deref(typ); t {
	case "", string(gatewayv1.HeaderMatchExact):
		return matchValue{name: name, value: value}, nil
	case string(gatewayv1.HeaderMatchRegularExpression):
		if err := checkRegex(value, f+".value"); err != nil {
			return matchValue{}, err
		}
		return matchValue{name: name, regex: value}, nil
	default:
		return matchValue{}, &fieldErr{f + ".type", fmt.Errorf("%q is not supported (Exact, RegularExpression)", t)}
	}
}

// maxRegexLen is the waypoint's bound on a regular expression (route.MaxRegexLen).
const maxRegexLen = 1024

// checkRegex refuses what the waypoint would: an expression that is not RE2, or too long.
func checkRegex(expr, field string) *fieldErr {
	if len(expr) > maxRegexLen {
		return &fieldErr{field, fmt.Errorf("%d bytes exceeds %d", len(expr), maxRegexLen)}
	}
	if _, err := regexp.Compile(expr); err != nil {
		return &fieldErr{field, fmt.Errorf("%q is not a regular expression (RE2): %v", expr, strings.TrimPrefix(err.Error(), "error parsing regexp: "))}
	}
	return nil
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
	if c := cmp.Compare(pathRank(mb), pathRank(ma)); c != 0 {
		return c
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
	if c := cmp.Compare(len(mb.QueryParams), len(ma.QueryParams)); c != 0 {
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

// pathRank orders path matches: exact, then prefixes longer than "/", then regular
// expressions (as Istio ranks them), then the prefix "/" that matches everything.
func pathRank(m *configv1.RouteMatch) int {
	p := m.GetPath()
	switch {
	case p.GetExact() != "":
		return 3
	case len(p.GetPrefix()) > 1:
		return 2
	case p.GetRegex() != "":
		return 1
	}
	return 0
}

func pathLen(m *configv1.RouteMatch) int {
	return len(m.GetPath().GetExact()) + len(m.GetPath().GetPrefix()) + len(m.GetPath().GetRegex())
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
