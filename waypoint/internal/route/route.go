// Package route compiles a Service's RouteConfig (its HTTPRoutes, merged by the controller)
// into the form the waypoint matches requests against, and validates it on the way: a
// RouteConfig with an invalid weight, retry, timeout or fault is refused as a whole, with an
// error naming the field, so that the xDS client NACKs it and the waypoint keeps what it had.
package route

import (
	"fmt"
	"math/rand/v2"
	"net/http"
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
}

// Match is one RouteMatch: every set field must match.
type Match struct {
	PathExact, PathPrefix string
	// PathStringPrefix matches any path starting with it (Istio's uri.prefix).
	PathStringPrefix string
	hasPath          bool
	Headers          []Header
	Method           string
}

// Header is an exact header match; Name is canonical.
type Header struct{ Name, Value string }

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
}

// Retry is a compiled retry policy.
type Retry struct {
	Codes    map[int]bool
	Attempts int
	Backoff  time.Duration
}

// Fault is a compiled fault-injection filter.
type Fault struct {
	AbortPercent float64
	AbortStatus  int
	DelayPercent float64
	Delay        time.Duration
}

// Compile validates rc and compiles it. name is the resource name; errors name the field.
func Compile(name string, rc *configv1.RouteConfig) (*Table, error) {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("routeconfig %s: %s: %s", name, field, fmt.Sprintf(format, args...))
	}
	t := &Table{Service: name}
	for i, r := range rc.GetRoutes() {
		f := fmt.Sprintf("routes[%d]", i)
		out := &Route{Name: r.GetName(), Ports: r.GetPorts()}
		if out.Name == "" {
			out.Name = fmt.Sprintf("%s/%d", name, i)
		}
		for j, p := range r.GetPorts() {
			if p == 0 || p > 65535 {
				return nil, bad(fmt.Sprintf("%s.ports[%d]", f, j), "%d out of range", p)
			}
		}
		for j, m := range r.GetMatches() {
			mf := fmt.Sprintf("%s.matches[%d]", f, j)
			var cm Match
			if p := m.GetPath(); p != nil {
				cm.hasPath = true
				v := p.GetExact()
				switch p.GetKind().(type) {
				case *configv1.PathMatch_Prefix:
					v = p.GetPrefix()
					cm.PathPrefix = strings.TrimSuffix(v, "/")
				case *configv1.PathMatch_StringPrefix:
					v = p.GetStringPrefix()
					cm.PathStringPrefix = v
				default:
					cm.PathExact = v
				}
				if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, "?# \t") {
					return nil, bad(mf+".path", "%q must start with / and hold no query, fragment or space", v)
				}
			}
			for k, h := range m.GetHeaders() {
				if !httpguts.ValidHeaderFieldName(h.GetName()) {
					return nil, bad(fmt.Sprintf("%s.headers[%d].name", mf, k), "%q is not a header name", h.GetName())
				}
				if !httpguts.ValidHeaderFieldValue(h.GetValue()) {
					return nil, bad(fmt.Sprintf("%s.headers[%d].value", mf, k), "not a valid header value")
				}
				cm.Headers = append(cm.Headers, Header{Name: http.CanonicalHeaderKey(h.GetName()), Value: h.GetValue()})
			}
			if meth := m.GetMethod(); meth != "" {
				if !validToken(meth) {
					return nil, bad(mf+".method", "%q is not an HTTP method", meth)
				}
				cm.Method = meth
			}
			out.Matches = append(out.Matches, cm)
		}
		for j, b := range r.GetBackends() {
			bf := fmt.Sprintf("%s.backends[%d]", f, j)
			if b.GetHostname() == "" {
				return nil, bad(bf+".hostname", "empty")
			}
			if b.GetPort() > 65535 {
				return nil, bad(bf+".port", "%d out of range", b.GetPort())
			}
			if b.GetWeight() > MaxWeight {
				return nil, bad(bf+".weight", "%d exceeds %d", b.GetWeight(), MaxWeight)
			}
			out.total += uint64(b.GetWeight())
			out.Backends = append(out.Backends, Backend{
				Service: ServiceKey(b.GetHostname(), rc.GetNamespace()), Hostname: b.GetHostname(),
				Port: b.GetPort(), Weight: b.GetWeight(), Subset: b.GetSubset(), SubsetName: b.GetSubsetName(),
			})
		}
		if to := r.GetTimeouts(); to != nil {
			var err error
			if out.RequestTimeout, err = duration(to.GetRequest() != nil, to.GetRequest().AsDuration(), to.GetRequest().CheckValid(), MaxTimeout); err != nil {
				return nil, bad(f+".timeouts.request", "%v", err)
			}
			if out.BackendTimeout, err = duration(to.GetBackendRequest() != nil, to.GetBackendRequest().AsDuration(), to.GetBackendRequest().CheckValid(), MaxTimeout); err != nil {
				return nil, bad(f+".timeouts.backend_request", "%v", err)
			}
			if out.RequestTimeout > 0 && out.BackendTimeout > out.RequestTimeout {
				return nil, bad(f+".timeouts.backend_request", "%s is longer than timeouts.request %s", out.BackendTimeout, out.RequestTimeout)
			}
		}
		if rt := r.GetRetry(); rt != nil {
			cr := &Retry{Codes: map[int]bool{}, Attempts: int(rt.GetAttempts()), Backoff: DefaultBackoff}
			if rt.GetAttempts() > MaxRetries {
				return nil, bad(f+".retry.attempts", "%d exceeds %d", rt.GetAttempts(), MaxRetries)
			}
			for k, c := range rt.GetCodes() {
				if c < 400 || c > 599 {
					return nil, bad(fmt.Sprintf("%s.retry.codes[%d]", f, k), "%d is not a 4xx or 5xx status", c)
				}
				cr.Codes[int(c)] = true
			}
			if rt.GetBackoff() != nil {
				d, err := duration(true, rt.GetBackoff().AsDuration(), rt.GetBackoff().CheckValid(), MaxBackoff)
				if err != nil {
					return nil, bad(f+".retry.backoff", "%v", err)
				}
				cr.Backoff = d
			}
			out.Retry = cr
		}
		if ft := r.GetFault(); ft != nil {
			cf := &Fault{}
			if a := ft.GetAbort(); a != nil {
				if a.GetPercentage() < 0 || a.GetPercentage() > 100 || a.GetPercentage() != a.GetPercentage() {
					return nil, bad(f+".fault.abort.percentage", "%v is not between 0 and 100", a.GetPercentage())
				}
				if a.GetStatus() < 200 || a.GetStatus() > 599 {
					return nil, bad(f+".fault.abort.status", "%d is not an HTTP status from 200 to 599", a.GetStatus())
				}
				cf.AbortPercent, cf.AbortStatus = a.GetPercentage(), int(a.GetStatus())
			}
			if d := ft.GetDelay(); d != nil {
				if d.GetPercentage() < 0 || d.GetPercentage() > 100 || d.GetPercentage() != d.GetPercentage() {
					return nil, bad(f+".fault.delay.percentage", "%v is not between 0 and 100", d.GetPercentage())
				}
				dd, err := duration(d.GetDelay() != nil, d.GetDelay().AsDuration(), d.GetDelay().CheckValid(), MaxFaultDelay)
				if err != nil || dd == 0 {
					if err == nil {
						err = fmt.Errorf("missing")
					}
					return nil, bad(f+".fault.delay.delay", "%v", err)
				}
				cf.DelayPercent, cf.Delay = d.GetPercentage(), dd
			}
			out.Fault = cf
		}
		t.Routes = append(t.Routes, out)
	}
	return t, nil
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
// or nil.
func (t *Table) Match(port uint16, r *http.Request) *Route {
	for _, rt := range t.Routes {
		if len(rt.Ports) > 0 && !contains(rt.Ports, uint32(port)) {
			continue
		}
		if len(rt.Matches) == 0 {
			return rt
		}
		for i := range rt.Matches {
			if rt.Matches[i].matches(r) {
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

func (m *Match) matches(r *http.Request) bool {
	if m.Method != "" && r.Method != m.Method {
		return false
	}
	if m.hasPath {
		path := r.URL.Path
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
	}
	for _, h := range m.Headers {
		vs := r.Header[h.Name]
		ok := false
		for _, v := range vs {
			if v == h.Value {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
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
