// Package route compiles a Service's RouteConfig (its HTTPRoutes, merged by the controller)
// into the form the waypoint matches requests against, and validates it on the way: a
// RouteConfig with an invalid weight, retry, timeout or fault is refused as a whole, with an
// error naming the field, so that the xDS client NACKs it and the waypoint keeps what it had.
package route

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"golang.org/x/net/http/httpguts"
)

// Limits on what a RouteConfig may ask for. They follow Gateway API where it has one
// (weights) and keep the rest to values for which a waypoint behaves sensibly.
const (
	MaxWeight      = 1_000_000
	MaxRetries     = 10
	MaxBackoff     = time.Minute
	MaxTimeout     = 24 * time.Hour
	MaxFaultDelay  = time.Hour
	DefaultBackoff = 25 * time.Millisecond
)

// Table is the compiled RouteConfig of one Service.
type Table struct {
	// Service is the parent Service's resource name, "<namespace>/<hostname>".
	Service string
	Routes  []*Route
	// TCPRoutes route opaque TCP connections (ports and backends only).
	TCPRoutes []*Route
}

// Route is one compiled HTTPRoute rule.
type Route struct {
	Name     string
	Ports    []uint32
	Matches  []Match
	Backends []Backend
	// total is the sum of the backends' weights; 0 with backends means "answer 500".
	total uint64
	// RequestTimeout bounds the whole request, retries included; BackendTimeout each
	// attempt. Zero means none.
	RequestTimeout, BackendTimeout time.Duration
	Retry                          *Retry
	Fault                          *Fault
	// RequestHeaders and ResponseHeaders edit the request forwarded and the response
	// returned; nil for none.
	RequestHeaders, ResponseHeaders *HeaderOps
	Rewrite                         *Rewrite
	Redirect                        *Redirect
	Mirrors                         []Mirror
	// DirectResponse, when set, is the answer, unforwarded.
	DirectResponse *DirectResponse
	// Cors, when set, is the route's CORS policy.
	Cors *Cors
	// SNIHosts limit a TCP route to TLS connections naming one of them.
	SNIHosts []string
}

// Cors is a compiled CORS policy.
type Cors struct {
	OriginsExact, OriginsPrefix               []string
	AllowMethods, AllowHeaders, ExposeHeaders []string
	MaxAge                                    time.Duration
	AllowCredentials                          bool
	IgnoreUnmatchedPreflights                 bool
}

// Allows reports whether origin may make cross-origin requests.
func (c *Cors) Allows(origin string) bool {
	for _, o := range c.OriginsExact {
		if o == "*" || o == origin {
			return true
		}
	}
	for _, p := range c.OriginsPrefix {
		if strings.HasPrefix(origin, p) {
			return true
		}
	}
	return false
}

// DirectResponse is a fixed answer.
type DirectResponse struct {
	Status int
	Body   []byte
}

// MaxDirectBody bounds a direct response's body.
const MaxDirectBody = 64 << 10

// HeaderOps edits headers: Remove, then Set, then Add; names canonical.
type HeaderOps struct {
	Set, Add map[string]string
	Remove   []string
}

// Apply edits h.
func (o *HeaderOps) Apply(h http.Header) {
	if o == nil {
		return
	}
	for _, k := range o.Remove {
		h.Del(k)
	}
	for k, v := range o.Set {
		h.Set(k, v)
	}
	for k, v := range o.Add {
		h.Add(k, v)
	}
}

// Rewrite replaces the matched path prefix (or the whole path) and the authority.
type Rewrite struct {
	Path, Authority string
	// FullPath replaces the whole path under a prefix match too.
	FullPath bool
}

// Redirect is a redirect answer's Location parts and status.
type Redirect struct {
	Path, Authority, Scheme string
	Port                    uint32
	Code                    int
	// ReplacePrefix replaces only the matched prefix with Path, as a Rewrite does.
	ReplacePrefix bool
	// DerivePort is where the port comes from when Port is 0.
	DerivePort configv1.Redirect_DerivePort
}

// Mirror receives a copy of Percent % of the requests.
type Mirror struct {
	Service, Hostname string
	Port              uint32
	Subset            map[string]string
	SubsetName        string
	Percent           float64
}

// Match is one RouteMatch: every set field must match.
type Match struct {
	PathExact, PathPrefix string
	// PathStringPrefix matches any path starting with it (Istio's uri.prefix).
	PathStringPrefix string
	// PathRegex, when set, must match the whole path.
	PathRegex *regexp.Regexp
	hasPath   bool
	// PathIgnoreCase compares paths case-insensitively.
	PathIgnoreCase bool
	Headers        []Header
	Method         string
	Query          []Query
	// Authority, when set, matches the Host header without its port.
	Authority *Header
	// SourceNamespace and SourceLabels match the client.
	SourceNamespace string
	SourceLabels    map[string]string
}

// Header is a header match; Name is canonical. It matches a value equal to Value, or
// starting with Prefix when that is set, or matching Regex whole when that is set, or any
// value when Present; Invert negates it.
type Header struct {
	Name, Value, Prefix string
	Regex               *regexp.Regexp
	Present, Invert     bool
}

// Query is a query parameter match: a value equal to Value, or matching Regex whole when
// that is set.
type Query struct {
	Name, Value string
	Regex       *regexp.Regexp
}

// Source is what a match may know of the client.
type Source struct {
	Namespace string
	Labels    map[string]string
}

// Backend is a Service that receives a share of the route's requests.
type Backend struct {
	// Service is the backend's resource name, "<namespace>/<hostname>"; Hostname its host.
	Service, Hostname string
	// Port is the Service port; 0 means the port the request arrived on.
	Port   uint32
	Weight uint32
	// Subset, when not empty, limits the endpoints to workloads with all these labels;
	// SubsetName names it.
	Subset     map[string]string
	SubsetName string
	// Policy is the destination's traffic policy; nil for the defaults.
	Policy *Policy
	// RequestHeaders and ResponseHeaders edit this backend's requests and responses, after
	// the route's.
	RequestHeaders, ResponseHeaders *HeaderOps
}

// Policy is a compiled TrafficPolicy.
type Policy struct {
	LB           configv1.TrafficPolicy_LoadBalancer_Simple
	HashHeader   string // canonical
	HashSourceIP bool
	HashQuery    string
	// ConnectTimeout bounds opening a connection to an endpoint; 0 for the default.
	ConnectTimeout time.Duration
	// MaxConnections, MaxPending, MaxRequests, MaxRetries: 0 means no bound.
	MaxConnections, MaxPending, MaxRequests, MaxRetries int
	// Outlier detection; Consecutive5xx and ConsecutiveGateway 0 mean off. Outlier says the
	// policy sets it: its values replace the waypoint's defaults even when both thresholds
	// are 0 (Istio's consecutive5xxErrors: 0 turns 5xx ejection off).
	Outlier                            bool
	Consecutive5xx, ConsecutiveGateway int
	BaseEjection                       time.Duration
	MaxEjectionPercent                 int
	// Retry budget; BudgetPercent 0 means none.
	BudgetPercent  float64
	BudgetMinRetry int
	// PortLevel are the policies for requests to one Service port.
	PortLevel map[uint32]*Policy
}

// ForPort is the policy for requests to Service port port.
func (p *Policy) ForPort(port uint16) *Policy {
	if p == nil {
		return nil
	}
	if pp, ok := p.PortLevel[uint32(port)]; ok {
		return pp
	}
	return p
}

// MaxInFlight is the bound on requests in flight to the destination, 0 for none.
func (p *Policy) MaxInFlight() int {
	if p == nil {
		return 0
	}
	switch {
	case p.MaxConnections == 0:
		return p.MaxRequests
	case p.MaxRequests == 0:
		return p.MaxConnections
	}
	return min(p.MaxConnections, p.MaxRequests)
}

// Retry is a compiled retry policy.
type Retry struct {
	Codes    map[int]bool
	Attempts int
	Backoff  time.Duration
	// Reset and ConnectFailure say whether those failures are retried.
	Reset, ConnectFailure bool
	// GRPCCodes are the gRPC statuses retried (a trailers-only answer's grpc-status).
	GRPCCodes map[string]bool
}

// Fault is a compiled fault-injection filter.
type Fault struct {
	AbortPercent float64
	AbortStatus  int
	// AbortGRPC answers with gRPC status AbortGRPCStatus instead.
	AbortGRPC       bool
	AbortGRPCStatus int
	DelayPercent    float64
	Delay           time.Duration
}

// Compile validates rc and compiles it. name is the resource name; errors name the field.
func Compile(name string, rc *configv1.RouteConfig) (*Table, error) {
	t := &Table{Service: name}
	for i, r := range rc.GetRoutes() {
		out, err := compileRoute(r, fmt.Sprintf("%s/%d", name, i), fmt.Sprintf("routes[%d]", i), rc.GetNamespace())
		if err != nil {
			return nil, fmt.Errorf("routeconfig %s: %w", name, err)
		}
		t.Routes = append(t.Routes, out)
	}
	if len(rc.GetTcpRoutes()) > 0 {
		tt, err := Compile(name, &configv1.RouteConfig{Namespace: rc.GetNamespace(), Routes: rc.GetTcpRoutes()})
		if err != nil {
			return nil, errors.New(strings.Replace(err.Error(), ": routes[", ": tcp_routes[", 1))
		}
		t.TCPRoutes = tt.Routes
	}
	return t, nil
}

// fieldError is an error in field f; Compile adds the RouteConfig's name.
func fieldError(f, format string, args ...any) error {
	return fmt.Errorf("%s: %s", f, fmt.Sprintf(format, args...))
}

// compileRoute compiles one rule: f is its field path, name its name when it has none, ns
// the namespace its backends' short hostnames are in.
func compileRoute(r *configv1.Route, name, f, ns string) (*Route, error) {
	out := &Route{Name: r.GetName(), Ports: r.GetPorts()}
	if out.Name == "" {
		out.Name = name
	}
	for j, p := range r.GetPorts() {
		if p == 0 || p > 65535 {
			return nil, fieldError(fmt.Sprintf("%s.ports[%d]", f, j), "%d out of range", p)
		}
	}
	for j, m := range r.GetMatches() {
		cm, err := compileMatch(m, fmt.Sprintf("%s.matches[%d]", f, j))
		if err != nil {
			return nil, err
		}
		out.Matches = append(out.Matches, cm)
	}
	for j, b := range r.GetBackends() {
		cb, err := compileBackend(b, fmt.Sprintf("%s.backends[%d]", f, j), ns)
		if err != nil {
			return nil, err
		}
		out.total += uint64(cb.Weight)
		out.Backends = append(out.Backends, cb)
	}
	var err error
	if out.RequestTimeout, out.BackendTimeout, err = compileTimeouts(r.GetTimeouts(), f+".timeouts"); err != nil {
		return nil, err
	}
	if out.Retry, err = compileRetry(r.GetRetry(), f+".retry"); err != nil {
		return nil, err
	}
	if out.Fault, err = compileFault(r.GetFault(), f+".fault"); err != nil {
		return nil, err
	}
	if err := compileL7(r, out, f); err != nil {
		return nil, err
	}
	return out, nil
}

// compileMatch compiles one match (mf is its field path).
func compileMatch(m *configv1.RouteMatch, mf string) (Match, error) {
	var cm Match
	if p := m.GetPath(); p != nil {
		if err := compilePathMatch(p, mf+".path", &cm); err != nil {
			return Match{}, err
		}
	}
	for k, h := range m.GetHeaders() {
		if !httpguts.ValidHeaderFieldName(h.GetName()) {
			return Match{}, fieldError(fmt.Sprintf("%s.headers[%d].name", mf, k), "%q is not a header name", h.GetName())
		}
		if !httpguts.ValidHeaderFieldValue(h.GetValue()) {
			return Match{}, fieldError(fmt.Sprintf("%s.headers[%d].value", mf, k), "not a valid header value")
		}
		re, err := wholeRegexp(h.GetRegex(), fmt.Sprintf("%s.headers[%d].regex", mf, k))
		if err != nil {
			return Match{}, err
		}
		cm.Headers = append(cm.Headers, Header{Name: http.CanonicalHeaderKey(h.GetName()), Value: h.GetValue(),
			Prefix: h.GetPrefix(), Regex: re, Present: h.GetPresent(), Invert: h.GetInvert()})
	}
	for k, q := range m.GetQueryParams() {
		if q.GetName() == "" {
			return Match{}, fieldError(fmt.Sprintf("%s.query_params[%d].name", mf, k), "empty")
		}
		re, err := wholeRegexp(q.GetRegex(), fmt.Sprintf("%s.query_params[%d].regex", mf, k))
		if err != nil {
			return Match{}, err
		}
		cm.Query = append(cm.Query, Query{Name: q.GetName(), Value: q.GetValue(), Regex: re})
	}
	if a := m.GetAuthority(); a != nil {
		re, err := wholeRegexp(a.GetRegex(), mf+".authority.regex")
		if err != nil {
			return Match{}, err
		}
		cm.Authority = &Header{Value: a.GetValue(), Prefix: a.GetPrefix(), Regex: re, Present: a.GetPresent(), Invert: a.GetInvert()}
	}
	cm.SourceNamespace, cm.SourceLabels, cm.PathIgnoreCase = m.GetSourceNamespace(), m.GetSourceLabels(), m.GetPathIgnoreCase()
	if cm.PathIgnoreCase {
		cm.PathExact, cm.PathPrefix, cm.PathStringPrefix = strings.ToLower(cm.PathExact), strings.ToLower(cm.PathPrefix), strings.ToLower(cm.PathStringPrefix)
	}
	if meth := m.GetMethod(); meth != "" {
		if !validToken(meth) {
			return Match{}, fieldError(mf+".method", "%q is not an HTTP method", meth)
		}
		cm.Method = meth
	}
	return cm, nil
}

// compilePathMatch sets cm's path match from p (field is its path).
func compilePathMatch(p *configv1.PathMatch, field string, cm *Match) error {
	cm.hasPath = true
	v := p.GetExact()
	switch p.GetKind().(type) {
	case *configv1.PathMatch_Prefix:
		v = p.GetPrefix()
		cm.PathPrefix = strings.TrimSuffix(v, "/")
	case *configv1.PathMatch_StringPrefix:
		v = p.GetStringPrefix()
		cm.PathStringPrefix = v
	case *configv1.PathMatch_Regex:
		re, err := wholeRegexp(p.GetRegex(), field+".regex")
		cm.PathRegex = re
		return err
	default:
		cm.PathExact = v
	}
	if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, "?# \t") {
		return fieldError(field, "%q must start with / and hold no query, fragment or space", v)
	}
	return nil
}

// compileBackend compiles one backend (bf is its field path) with its weight, policy and
// header edits.
func compileBackend(b *configv1.Backend, bf, ns string) (Backend, error) {
	if b.GetHostname() == "" {
		return Backend{}, fieldError(bf+".hostname", "empty")
	}
	if b.GetPort() > 65535 {
		return Backend{}, fieldError(bf+".port", "%d out of range", b.GetPort())
	}
	if b.GetWeight() > MaxWeight {
		return Backend{}, fieldError(bf+".weight", "%d exceeds %d", b.GetWeight(), MaxWeight)
	}
	pol, err := compilePolicy(b.GetPolicy(), bf+".policy")
	if err != nil {
		return Backend{}, err
	}
	reqH, err := compileHeaderOps(b.GetRequestHeaders(), bf+".request_headers")
	if err != nil {
		return Backend{}, err
	}
	respH, err := compileHeaderOps(b.GetResponseHeaders(), bf+".response_headers")
	if err != nil {
		return Backend{}, err
	}
	return Backend{
		Service: ServiceKey(b.GetHostname(), ns), Hostname: b.GetHostname(),
		Port: b.GetPort(), Weight: b.GetWeight(), Subset: b.GetSubset(), SubsetName: b.GetSubsetName(),
		Policy: pol, RequestHeaders: reqH, ResponseHeaders: respH,
	}, nil
}

// compileTimeouts returns the request and backend timeouts (f is the timeouts' field path).
func compileTimeouts(to *configv1.Timeouts, f string) (request, backend time.Duration, err error) {
	if to == nil {
		return 0, 0, nil
	}
	if request, err = duration(to.GetRequest() != nil, to.GetRequest().AsDuration(), to.GetRequest().CheckValid(), MaxTimeout); err != nil {
		return 0, 0, fieldError(f+".request", "%v", err)
	}
	if backend, err = duration(to.GetBackendRequest() != nil, to.GetBackendRequest().AsDuration(), to.GetBackendRequest().CheckValid(), MaxTimeout); err != nil {
		return 0, 0, fieldError(f+".backend_request", "%v", err)
	}
	if request > 0 && backend > request {
		return 0, 0, fieldError(f+".backend_request", "%s is longer than timeouts.request %s", backend, request)
	}
	return request, backend, nil
}

// compileRetry compiles a retry policy (f is its field path); nil for none.
func compileRetry(rt *configv1.Retry, f string) (*Retry, error) {
	if rt == nil {
		return nil, nil
	}
	cr := &Retry{Codes: map[int]bool{}, Attempts: int(rt.GetAttempts()), Backoff: DefaultBackoff, Reset: len(rt.GetOn()) == 0, ConnectFailure: len(rt.GetOn()) == 0}
	for k, c := range rt.GetGrpcCodes() {
		if c > 16 {
			return nil, fieldError(fmt.Sprintf("%s.grpc_codes[%d]", f, k), "%d is not a gRPC status code", c)
		}
		if cr.GRPCCodes == nil {
			cr.GRPCCodes = map[string]bool{}
		}
		cr.GRPCCodes[strconv.Itoa(int(c))] = true
	}
	for k, on := range rt.GetOn() {
		switch on {
		case "reset":
			cr.Reset = true
		case "connect-failure":
			cr.ConnectFailure = true
		default:
			return nil, fieldError(fmt.Sprintf("%s.on[%d]", f, k), "%q is not reset or connect-failure", on)
		}
	}
	if rt.GetAttempts() > MaxRetries {
		return nil, fieldError(f+".attempts", "%d exceeds %d", rt.GetAttempts(), MaxRetries)
	}
	for k, c := range rt.GetCodes() {
		if c < 400 || c > 599 {
			return nil, fieldError(fmt.Sprintf("%s.codes[%d]", f, k), "%d is not a 4xx or 5xx status", c)
		}
		cr.Codes[int(c)] = true
	}
	if rt.GetBackoff() != nil {
		d, err := duration(true, rt.GetBackoff().AsDuration(), rt.GetBackoff().CheckValid(), MaxBackoff)
		if err != nil {
			return nil, fieldError(f+".backoff", "%v", err)
		}
		cr.Backoff = d
	}
	return cr, nil
}

// compileFault compiles a fault-injection filter (f is its field path); nil for none.
func compileFault(ft *configv1.Fault, f string) (*Fault, error) {
	if ft == nil {
		return nil, nil
	}
	cf := &Fault{}
	if a := ft.GetAbort(); a != nil {
		if err := compileAbort(a, f+".abort", cf); err != nil {
			return nil, err
		}
	}
	if d := ft.GetDelay(); d != nil {
		if err := validPercentage(d.GetPercentage(), f+".delay.percentage"); err != nil {
			return nil, err
		}
		dd, err := duration(d.GetDelay() != nil, d.GetDelay().AsDuration(), d.GetDelay().CheckValid(), MaxFaultDelay)
		if err != nil || dd == 0 {
			if err == nil {
				err = fmt.Errorf("missing")
			}
			return nil, fieldError(f+".delay.delay", "%v", err)
		}
		cf.DelayPercent, cf.Delay = d.GetPercentage(), dd
	}
	return cf, nil
}

// compileAbort sets cf's abort from a (f is its field path).
func compileAbort(a *configv1.Fault_Abort, f string, cf *Fault) error {
	if err := validPercentage(a.GetPercentage(), f+".percentage"); err != nil {
		return err
	}
	switch {
	case a.GetGrpc() && a.GetGrpcStatus() > 16:
		return fieldError(f+".grpc_status", "%d is not a gRPC status code", a.GetGrpcStatus())
	case !a.GetGrpc() && (a.GetStatus() < 200 || a.GetStatus() > 599):
		return fieldError(f+".status", "%d is not an HTTP status from 200 to 599", a.GetStatus())
	}
	cf.AbortPercent, cf.AbortStatus = a.GetPercentage(), int(a.GetStatus())
	if a.GetGrpc() {
		cf.AbortGRPC, cf.AbortGRPCStatus = true, int(a.GetGrpcStatus())
	}
	return nil
}

// validPercentage refuses a percentage outside [0, 100], or NaN.
func validPercentage(p float64, field string) error {
	if p < 0 || p > 100 || p != p {
		return fieldError(field, "%v is not between 0 and 100", p)
	}
	return nil
}

// MatchTCP returns the first TCP route whose ports fit port and whose SNI hosts, if any, fit
// sni (the TLS server name, "" for none), or nil.
func (t *Table) MatchTCP(port uint16, sni string) *Route {
	for _, rt := range t.TCPRoutes {
		if len(rt.Ports) > 0 && !contains(rt.Ports, uint32(port)) {
			continue
		}
		if len(rt.SNIHosts) == 0 || matchSNI(rt.SNIHosts, sni) {
			return rt
		}
	}
	return nil
}

func matchSNI(hosts []string, sni string) bool {
	sni = strings.ToLower(sni)
	for _, h := range hosts {
		if h == sni && sni != "" {
			return true
		}
		if suffix, ok := strings.CutPrefix(h, "*"); ok && strings.HasSuffix(sni, suffix) && len(sni) > len(suffix) {
			return true
		}
	}
	return false
}

func duration(set bool, d time.Duration, valid error, limit time.Duration) (time.Duration, error) {
	if !set {
		return 0, nil
	}
	if valid != nil {
		return 0, valid
	}
	if d < 0 {
		return 0, fmt.Errorf("%s is negative", d)
	}
	if d > limit {
		return 0, fmt.Errorf("%s exceeds %s", d, limit)
	}
	return d, nil
}

func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return s != ""
}

// ServiceKey returns the resource name of the Service with hostname: "<namespace>/<hostname>",
// the namespace read from a "<name>.<namespace>.svc..." hostname, else fallback.
func ServiceKey(hostname, fallback string) string {
	parts := strings.Split(hostname, ".")
	ns := fallback
	if len(parts) >= 2 && parts[1] != "" {
		ns = parts[1]
	}
	return ns + "/" + hostname
}

// Match returns the first route whose ports and matches fit the request arriving on port,
// or nil. A match on the source never fits.
func (t *Table) Match(port uint16, r *http.Request) *Route {
	return t.MatchFrom(port, r, Source{})
}

// MatchFrom is Match for a request from src.
func (t *Table) MatchFrom(port uint16, r *http.Request, src Source) *Route {
	for _, rt := range t.Routes {
		if len(rt.Ports) > 0 && !contains(rt.Ports, uint32(port)) {
			continue
		}
		if len(rt.Matches) == 0 {
			return rt
		}
		for i := range rt.Matches {
			if rt.Matches[i].matches(r, src) {
				return rt
			}
		}
	}
	return nil
}

func contains(ports []uint32, p uint32) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

func (m *Match) matches(r *http.Request, src Source) bool {
	if m.Method != "" && r.Method != m.Method {
		return false
	}
	if m.SourceNamespace != "" && m.SourceNamespace != src.Namespace {
		return false
	}
	for k, v := range m.SourceLabels {
		if lv, ok := src.Labels[k]; !ok || lv != v {
			return false
		}
	}
	if m.Authority != nil {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if !m.Authority.matchValues([]string{host}) {
			return false
		}
	}
	if len(m.Query) > 0 {
		q := r.URL.Query()
		for _, qm := range m.Query {
			if !slices.ContainsFunc(q[qm.Name], qm.matches) {
				return false
			}
		}
	}
	if m.hasPath {
		path := r.URL.Path
		if m.PathIgnoreCase {
			path = strings.ToLower(path)
		}
		if m.PathExact != "" && path != m.PathExact {
			return false
		}
		if m.PathExact == "" && m.PathPrefix != "" &&
			!(path == m.PathPrefix || strings.HasPrefix(path, m.PathPrefix+"/")) {
			return false
		}
		if m.PathStringPrefix != "" && !strings.HasPrefix(path, m.PathStringPrefix) {
			return false
		}
		if m.PathRegex != nil && !m.PathRegex.MatchString(path) {
			return false
		}
	}
	for _, h := range m.Headers {
		if !h.matchValues(r.Header[h.Name]) {
			return false
		}
	}
	return true
}

// matchValues reports whether one of a header's values matches h (or, inverted, none does).
func (h *Header) matchValues(vs []string) bool {
	ok := false
	for _, v := range vs {
		switch {
		case h.Present:
			ok = true
		case h.Regex != nil:
			ok = h.Regex.MatchString(v)
		case h.Prefix != "":
			ok = strings.HasPrefix(v, h.Prefix)
		default:
			ok = v == h.Value
		}
		if ok {
			break
		}
	}
	return ok != h.Invert
}

// PickBackend chooses a backend in proportion to the weights. ok is false when the route
// has backends that all weigh 0 (the caller answers 500); a route without backends returns
// the zero Backend and ok, meaning "the parent Service".
func (r *Route) PickBackend() (Backend, bool) {
	if len(r.Backends) == 0 {
		return Backend{}, true
	}
	if r.total == 0 {
		return Backend{}, false
	}
	n := rand.Uint64N(r.total)
	for _, b := range r.Backends {
		if n < uint64(b.Weight) {
			return b, true
		}
		n -= uint64(b.Weight)
	}
	return r.Backends[len(r.Backends)-1], true
}

func compileHeaderOps(o *configv1.HeaderOps, field string) (*HeaderOps, error) {
	if o == nil {
		return nil, nil
	}
	out := &HeaderOps{Set: map[string]string{}, Add: map[string]string{}}
	for _, m := range []struct {
		name string
		in   map[string]string
		out  map[string]string
	}{{"set", o.GetSet(), out.Set}, {"add", o.GetAdd(), out.Add}} {
		for k, v := range m.in {
			if !httpguts.ValidHeaderFieldName(k) {
				return nil, fmt.Errorf("%s.%s: %q is not a header name", field, m.name, k)
			}
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("%s.%s[%s]: not a valid header value", field, m.name, k)
			}
			m.out[http.CanonicalHeaderKey(k)] = v
		}
	}
	for i, k := range o.GetRemove() {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("%s.remove[%d]: %q is not a header name", field, i, k)
		}
		out.Remove = append(out.Remove, http.CanonicalHeaderKey(k))
	}
	return out, nil
}

// compileL7 compiles a route's header edits, rewrite, redirect, direct response, SNI hosts,
// CORS policy and mirrors.
func compileL7(r *configv1.Route, out *Route, f string) error {
	var err error
	if out.RequestHeaders, err = compileHeaderOps(r.GetRequestHeaders(), f+".request_headers"); err != nil {
		return err
	}
	if out.ResponseHeaders, err = compileHeaderOps(r.GetResponseHeaders(), f+".response_headers"); err != nil {
		return err
	}
	if out.Rewrite, err = compileRewrite(r.GetRewrite(), f+".rewrite"); err != nil {
		return err
	}
	if out.Redirect, err = compileRedirect(r.GetRedirect(), f+".redirect"); err != nil {
		return err
	}
	if out.DirectResponse, err = compileDirectResponse(r.GetDirectResponse(), f+".direct_response"); err != nil {
		return err
	}
	for i, h := range r.GetSniHosts() {
		if h == "" || strings.ContainsAny(h, " /:") || (strings.Contains(h, "*") && !strings.HasPrefix(h, "*.")) || strings.Count(h, "*") > 1 {
			return fmt.Errorf("%s.sni_hosts[%d]: %q is not a server name or *.domain", f, i, h)
		}
		out.SNIHosts = append(out.SNIHosts, strings.ToLower(h))
	}
	if out.Cors, err = compileCors(r.GetCors(), f+".cors"); err != nil {
		return err
	}
	for i, m := range r.GetMirrors() {
		cm, err := compileMirror(m, fmt.Sprintf("%s.mirrors[%d]", f, i))
		if err != nil {
			return err
		}
		out.Mirrors = append(out.Mirrors, cm)
	}
	return nil
}

// compileRewrite compiles a rewrite (f is its field path); nil for none.
func compileRewrite(rw *configv1.Rewrite, f string) (*Rewrite, error) {
	if rw == nil {
		return nil, nil
	}
	if rw.GetPath() != "" && (!strings.HasPrefix(rw.GetPath(), "/") || strings.ContainsAny(rw.GetPath(), "?# \t")) {
		return nil, fmt.Errorf("%s.path: %q must start with / and hold no query, fragment or space", f, rw.GetPath())
	}
	if rw.GetAuthority() != "" && !httpguts.ValidHostHeader(rw.GetAuthority()) {
		return nil, fmt.Errorf("%s.authority: %q is not a host", f, rw.GetAuthority())
	}
	return &Rewrite{Path: rw.GetPath(), Authority: rw.GetAuthority(), FullPath: rw.GetFullPath()}, nil
}

// compileRedirect compiles a redirect (f is its field path); nil for none.
func compileRedirect(rd *configv1.Redirect, f string) (*Redirect, error) {
	if rd == nil {
		return nil, nil
	}
	c := int(rd.GetCode())
	switch c {
	case 0:
		c = http.StatusMovedPermanently
	case 301, 302, 303, 307, 308:
	default:
		return nil, fmt.Errorf("%s.code: %d is not 301, 302, 303, 307 or 308", f, c)
	}
	if rd.GetScheme() != "" && rd.GetScheme() != "http" && rd.GetScheme() != "https" {
		return nil, fmt.Errorf("%s.scheme: %q is not http or https", f, rd.GetScheme())
	}
	if rd.GetPort() > 65535 {
		return nil, fmt.Errorf("%s.port: %d out of range", f, rd.GetPort())
	}
	if rd.GetPath() != "" && (!strings.HasPrefix(rd.GetPath(), "/") || strings.ContainsAny(rd.GetPath(), " \t")) {
		return nil, fmt.Errorf("%s.path: %q must start with / and hold no space", f, rd.GetPath())
	}
	if rd.GetAuthority() != "" && !httpguts.ValidHostHeader(rd.GetAuthority()) {
		return nil, fmt.Errorf("%s.authority: %q is not a host", f, rd.GetAuthority())
	}
	if _, ok := configv1.Redirect_DerivePort_name[int32(rd.GetDerivePort())]; !ok {
		return nil, fmt.Errorf("%s.derive_port: unknown value %d", f, rd.GetDerivePort())
	}
	return &Redirect{Path: rd.GetPath(), Authority: rd.GetAuthority(), Scheme: rd.GetScheme(), Port: rd.GetPort(), Code: c,
		ReplacePrefix: rd.GetReplacePrefix(), DerivePort: rd.GetDerivePort()}, nil
}

// compileDirectResponse compiles a direct response (f is its field path); nil for none.
func compileDirectResponse(dr *configv1.DirectResponse, f string) (*DirectResponse, error) {
	if dr == nil {
		return nil, nil
	}
	if dr.GetStatus() < 200 || dr.GetStatus() > 599 {
		return nil, fmt.Errorf("%s.status: %d is not in [200, 599]", f, dr.GetStatus())
	}
	if len(dr.GetBody()) > MaxDirectBody {
		return nil, fmt.Errorf("%s.body: %d bytes exceeds %d", f, len(dr.GetBody()), MaxDirectBody)
	}
	return &DirectResponse{Status: int(dr.GetStatus()), Body: dr.GetBody()}, nil
}

// compileCors compiles a CORS policy (f is its field path); nil for none.
func compileCors(c *configv1.CorsPolicy, f string) (*Cors, error) {
	if c == nil {
		return nil, nil
	}
	oc := &Cors{OriginsExact: c.GetAllowOriginsExact(), OriginsPrefix: c.GetAllowOriginsPrefix(),
		AllowMethods: c.GetAllowMethods(), AllowHeaders: c.GetAllowHeaders(), ExposeHeaders: c.GetExposeHeaders(),
		AllowCredentials: c.GetAllowCredentials(), IgnoreUnmatchedPreflights: c.GetIgnoreUnmatchedPreflights()}
	for i, m := range oc.AllowMethods {
		if !validToken(m) {
			return nil, fmt.Errorf("%s.allow_methods[%d]: %q is not an HTTP method", f, i, m)
		}
	}
	for _, l := range [][]string{oc.AllowHeaders, oc.ExposeHeaders} {
		for _, h := range l {
			if h != "*" && !httpguts.ValidHeaderFieldName(h) {
				return nil, fmt.Errorf("%s: %q is not a header name", f, h)
			}
		}
	}
	if ma := c.GetMaxAge(); ma != nil {
		d, err := duration(true, ma.AsDuration(), ma.CheckValid(), MaxTimeout)
		if err != nil {
			return nil, fmt.Errorf("%s.max_age: %v", f, err)
		}
		oc.MaxAge = d
	}
	return oc, nil
}

// compileMirror compiles one mirror (mf is its field path).
func compileMirror(m *configv1.Mirror, mf string) (Mirror, error) {
	if m.GetHostname() == "" {
		return Mirror{}, fmt.Errorf("%s.hostname: empty", mf)
	}
	if m.GetPort() > 65535 {
		return Mirror{}, fmt.Errorf("%s.port: %d out of range", mf, m.GetPort())
	}
	if err := validPercentage(m.GetPercentage(), mf+".percentage"); err != nil {
		return Mirror{}, err
	}
	return Mirror{Service: ServiceKey(m.GetHostname(), ""), Hostname: m.GetHostname(), Port: m.GetPort(),
		Subset: m.GetSubset(), SubsetName: m.GetSubsetName(), Percent: m.GetPercentage()}, nil
}

func compilePolicy(p *configv1.TrafficPolicy, f string) (*Policy, error) {
	if p == nil {
		return nil, nil
	}
	out, err := compileOnePolicy(p, f)
	if err != nil {
		return nil, err
	}
	for port, pp := range p.GetPortLevel() {
		pf := fmt.Sprintf("%s.port_level[%d]", f, port)
		if port == 0 || port > 65535 {
			return nil, fmt.Errorf("%s: port out of range", pf)
		}
		merged := &configv1.TrafficPolicy{LoadBalancer: p.GetLoadBalancer(), ConnectionPool: p.GetConnectionPool(),
			OutlierDetection: p.GetOutlierDetection(), RetryBudget: p.GetRetryBudget()}
		if pp.GetLoadBalancer() != nil {
			merged.LoadBalancer = pp.GetLoadBalancer()
		}
		if pp.GetConnectionPool() != nil {
			merged.ConnectionPool = pp.GetConnectionPool()
		}
		if pp.GetOutlierDetection() != nil {
			merged.OutlierDetection = pp.GetOutlierDetection()
		}
		if pp.GetRetryBudget() != nil {
			merged.RetryBudget = pp.GetRetryBudget()
		}
		c, err := compileOnePolicy(merged, pf)
		if err != nil {
			return nil, err
		}
		if out.PortLevel == nil {
			out.PortLevel = map[uint32]*Policy{}
		}
		out.PortLevel[port] = c
	}
	return out, nil
}

func compileOnePolicy(p *configv1.TrafficPolicy, f string) (*Policy, error) {
	out := &Policy{}
	if lb := p.GetLoadBalancer(); lb != nil {
		switch lb.GetSimple() {
		case configv1.TrafficPolicy_LoadBalancer_DEFAULT, configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN,
			configv1.TrafficPolicy_LoadBalancer_LEAST_REQUEST, configv1.TrafficPolicy_LoadBalancer_RANDOM:
		default:
			return nil, fmt.Errorf("%s.load_balancer.simple: unknown value %d", f, lb.GetSimple())
		}
		out.LB = lb.GetSimple()
		if h := lb.GetHashHeader(); h != "" {
			if !httpguts.ValidHeaderFieldName(h) {
				return nil, fmt.Errorf("%s.load_balancer.hash_header: %q is not a header name", f, h)
			}
			out.HashHeader = http.CanonicalHeaderKey(h)
		}
		out.HashSourceIP = lb.GetHashSourceIp()
		out.HashQuery = lb.GetHashQueryParameter()
	}
	if cp := p.GetConnectionPool(); cp != nil {
		out.MaxConnections, out.MaxPending = int(cp.GetMaxConnections()), int(cp.GetMaxPendingRequests())
		out.MaxRequests, out.MaxRetries = int(cp.GetMaxRequests()), int(cp.GetMaxRetries())
		if ct := cp.GetConnectTimeout(); ct != nil {
			d, err := duration(true, ct.AsDuration(), ct.CheckValid(), MaxTimeout)
			if err != nil {
				return nil, fmt.Errorf("%s.connection_pool.connect_timeout: %v", f, err)
			}
			out.ConnectTimeout = d
		}
	}
	if od := p.GetOutlierDetection(); od != nil {
		out.Outlier = true
		out.Consecutive5xx, out.ConsecutiveGateway = int(od.GetConsecutive_5Xx()), int(od.GetConsecutiveGatewayErrors())
		out.BaseEjection = 30 * time.Second
		if b := od.GetBaseEjectionTime(); b != nil {
			d, err := duration(true, b.AsDuration(), b.CheckValid(), time.Hour)
			if err != nil {
				return nil, fmt.Errorf("%s.outlier_detection.base_ejection_time: %v", f, err)
			}
			if d > 0 {
				out.BaseEjection = d
			}
		}
		if od.GetMaxEjectionPercent() > 100 {
			return nil, fmt.Errorf("%s.outlier_detection.max_ejection_percent: %d exceeds 100", f, od.GetMaxEjectionPercent())
		}
		out.MaxEjectionPercent = int(od.GetMaxEjectionPercent())
		if out.MaxEjectionPercent == 0 {
			out.MaxEjectionPercent = 10 // Istio's default
		}
	}
	if rb := p.GetRetryBudget(); rb != nil {
		if rb.GetPercent() < 0 || rb.GetPercent() > 100 || rb.GetPercent() != rb.GetPercent() {
			return nil, fmt.Errorf("%s.retry_budget.percent: %v is not between 0 and 100", f, rb.GetPercent())
		}
		out.BudgetPercent, out.BudgetMinRetry = rb.GetPercent(), int(rb.GetMinRetryConcurrency())
		if out.BudgetPercent == 0 {
			out.BudgetPercent = 20 // Envoy's default
		}
		if out.BudgetMinRetry == 0 {
			out.BudgetMinRetry = 3
		}
	}
	return out, nil
}
