package model

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"ambit.dev/controller/internal/istioapi"
)

// istioL7 compiles a VirtualService rule's headers, rewrite, redirect and mirrors into r.
func istioL7(h istioapi.HTTPRoute, base, ns string, opts Options, r *configv1.Route, ir *IstioRoute) error {
	if h.Headers != nil {
		if err := mergeHeaders(r, h.Headers, base+".headers"); err != nil {
			return err
		}
	}
	if rw := h.Rewrite; rw != nil {
		if len(rw.URIRegexRewrite) > 0 {
			return &fieldErr{base + ".rewrite.uriRegexRewrite", fmt.Errorf("not supported")}
		}
		if rw.URI != "" && !strings.HasPrefix(rw.URI, "/") {
			return &fieldErr{base + ".rewrite.uri", fmt.Errorf("%q does not start with /", rw.URI)}
		}
		r.Rewrite = &configv1.Rewrite{Path: rw.URI, Authority: rw.Authority}
	}
	if rd := h.Redirect; rd != nil {
		f := base + ".redirect"
		switch {
		case len(h.Route) > 0:
			return &fieldErr{f, fmt.Errorf("redirect and route are mutually exclusive")}
		case h.Rewrite != nil:
			return &fieldErr{f, fmt.Errorf("redirect and rewrite are mutually exclusive")}
		case rd.DerivePort != "" && rd.Port != 0:
			return &fieldErr{f + ".derivePort", fmt.Errorf("port and derivePort are mutually exclusive")}
		case rd.PrefixRewrite != "":
			return &fieldErr{f + ".prefixRewrite", fmt.Errorf("not supported")}
		case rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https":
			return &fieldErr{f + ".scheme", fmt.Errorf("%q is not http or https", rd.Scheme)}
		case rd.Port > 65535:
			return &fieldErr{f + ".port", fmt.Errorf("%d out of range", rd.Port)}
		case rd.URI != "" && !strings.HasPrefix(rd.URI, "/"):
			return &fieldErr{f + ".uri", fmt.Errorf("%q does not start with /", rd.URI)}
		}
		switch rd.RedirectCode {
		case 0, 301, 302, 303, 307, 308:
		default:
			return &fieldErr{f + ".redirectCode", fmt.Errorf("%d is not 301, 302, 303, 307 or 308", rd.RedirectCode)}
		}
		derive, ok := configv1.Redirect_DerivePort_value[rd.DerivePort]
		if rd.DerivePort == "KEEP" || (!ok && rd.DerivePort != "") {
			return &fieldErr{f + ".derivePort", fmt.Errorf("%q is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT", rd.DerivePort)}
		}
		r.Redirect = &configv1.Redirect{Path: rd.URI, Authority: rd.Authority, Port: rd.Port, Scheme: rd.Scheme, Code: rd.RedirectCode,
			DerivePort: configv1.Redirect_DerivePort(derive)}
	}
	if dr := h.DirectResponse; dr != nil {
		f := base + ".directResponse"
		switch {
		case len(h.Route) > 0 || h.Redirect != nil:
			return &fieldErr{f, fmt.Errorf("directResponse, route and redirect are mutually exclusive")}
		case dr.Status < 200 || dr.Status > 599:
			return &fieldErr{f + ".status", fmt.Errorf("%d is not in [200, 599]", dr.Status)}
		}
		out := &configv1.DirectResponse{Status: dr.Status}
		if b := dr.Body; b != nil {
			if b.String != "" && len(b.Bytes) > 0 {
				return &fieldErr{f + ".body", fmt.Errorf("string and bytes are mutually exclusive")}
			}
			out.Body = append([]byte(b.String), b.Bytes...)
			if len(out.Body) > 64<<10 {
				return &fieldErr{f + ".body", fmt.Errorf("%d bytes exceeds 64 KiB", len(out.Body))}
			}
		}
		r.DirectResponse = out
	}
	if c := h.CorsPolicy; c != nil {
		f := base + ".corsPolicy"
		out := &configv1.CorsPolicy{AllowOriginsExact: slices.Clone(c.AllowOrigin), AllowMethods: slices.Clone(c.AllowMethods),
			AllowHeaders: slices.Clone(c.AllowHeaders), ExposeHeaders: slices.Clone(c.ExposeHeaders),
			AllowCredentials: c.AllowCredentials != nil && *c.AllowCredentials}
		for i, o := range c.AllowOrigins {
			switch {
			case o.Regex != "":
				return &fieldErr{fmt.Sprintf("%s.allowOrigins[%d].regex", f, i), fmt.Errorf("regular expressions are not supported")}
			case o.Exact != "":
				out.AllowOriginsExact = append(out.AllowOriginsExact, o.Exact)
			case o.Prefix != "":
				out.AllowOriginsPrefix = append(out.AllowOriginsPrefix, o.Prefix)
			}
		}
		if c.MaxAge != "" {
			d, err := istioDuration(c.MaxAge)
			if err != nil {
				return &fieldErr{f + ".maxAge", err}
			}
			out.MaxAge = durationpb.New(d)
		}
		switch c.UnmatchedPreflights {
		case "", "UNSPECIFIED", "FORWARD":
		case "IGNORE":
			out.IgnoreUnmatchedPreflights = true
		default:
			return &fieldErr{f + ".unmatchedPreflights", fmt.Errorf("%q is not FORWARD or IGNORE", c.UnmatchedPreflights)}
		}
		r.Cors = out
	}
	type mirror struct {
		d     istioapi.Destination
		pct   float64
		field string
	}
	var ms []mirror
	if h.Mirror != nil {
		if len(h.Mirrors) > 0 {
			return &fieldErr{base + ".mirrors", fmt.Errorf("mirror and mirrors are mutually exclusive")}
		}
		pct := 100.0
		switch {
		case h.MirrorPercentage != nil:
			pct = h.MirrorPercentage.Value
		case h.MirrorPercent != nil:
			pct = float64(*h.MirrorPercent)
		}
		ms = append(ms, mirror{*h.Mirror, pct, base + ".mirror"})
	} else if h.MirrorPercentage != nil || h.MirrorPercent != nil {
		return &fieldErr{base + ".mirrorPercentage", fmt.Errorf("set without mirror")}
	}
	for k, m := range h.Mirrors {
		pct := 100.0
		if m.Percentage != nil {
			pct = m.Percentage.Value
		}
		ms = append(ms, mirror{m.Destination, pct, fmt.Sprintf("%s.mirrors[%d].destination", base, k)})
	}
	for _, m := range ms {
		if m.pct < 0 || m.pct > 100 || m.pct != m.pct {
			return &fieldErr{m.field, fmt.Errorf("percentage %v is not in [0, 100]", m.pct)}
		}
		if m.d.Host == "" || strings.Contains(m.d.Host, "*") {
			return &fieldErr{m.field + ".host", fmt.Errorf("%q is not a Service host", m.d.Host)}
		}
		mm := &configv1.Mirror{Hostname: ResolveHost(m.d.Host, ns, opts.Domain), Percentage: m.pct}
		if m.d.Port != nil {
			mm.Port = m.d.Port.Number
		}
		r.Mirrors = append(r.Mirrors, mm)
		ir.mirrorSubsets = append(ir.mirrorSubsets, m.d.Subset)
		ir.mirrorField = append(ir.mirrorField, m.field+".subset")
	}
	return nil
}

// mergeHeaders adds Istio's header operations to the route's (a later set wins).
func mergeHeaders(r *configv1.Route, h *istioapi.Headers, field string) error {
	if err := mergeHeaderOps(&r.RequestHeaders, h.Request, field+".request"); err != nil {
		return err
	}
	if err := mergeHeaderOps(&r.ResponseHeaders, h.Response, field+".response"); err != nil {
		return err
	}
	return nil
}

// mergeHeaderOps adds ops to *dst, creating it if need be (a later set wins); f names ops.
// Gateway API's header filters come here too, as the same operations.
func mergeHeaderOps(dst **configv1.HeaderOps, ops *istioapi.HeaderOperations, f string) *fieldErr {
	if ops == nil {
		return nil
	}
	if *dst == nil {
		*dst = &configv1.HeaderOps{}
	}
	d := *dst
	for _, m := range []struct {
		name string
		in   map[string]string
		out  *map[string]string
	}{{"set", ops.Set, &d.Set}, {"add", ops.Add, &d.Add}} {
		for k, v := range m.in {
			if k == "" {
				return &fieldErr{f + "." + m.name, fmt.Errorf("empty header name")}
			}
			if *m.out == nil {
				*m.out = map[string]string{}
			}
			(*m.out)[k] = v
		}
	}
	d.Remove = append(d.Remove, ops.Remove...)
	return nil
}

// istioTrafficPolicy compiles a DestinationRule's trafficPolicy; what the waypoint does not
// implement is refused with an error naming the field. base is the policy's field path.
func istioTrafficPolicy(tp *istioapi.TrafficPolicy, base string) (*configv1.TrafficPolicy, error) {
	if tp == nil {
		return nil, nil
	}
	if err := unsupported(base, "", setField{"tunnel", len(tp.Tunnel) > 0}, setField{"proxyProtocol", len(tp.ProxyProtocol) > 0}); err != nil {
		return nil, err
	}
	portLevel, err := istioPortLevel(tp.PortLevelSettings, base)
	if err != nil {
		return nil, err
	}
	out := &configv1.TrafficPolicy{PortLevel: portLevel}
	if err := istioTLS(tp.TLS, base+".tls"); err != nil {
		return nil, err
	}
	if out.LoadBalancer, err = istioLoadBalancer(tp.LoadBalancer, base+".loadBalancer"); err != nil {
		return nil, err
	}
	if out.ConnectionPool, err = istioConnectionPool(tp.ConnectionPool, base+".connectionPool"); err != nil {
		return nil, err
	}
	if out.OutlierDetection, err = istioOutlierDetection(tp.OutlierDetection, base+".outlierDetection"); err != nil {
		return nil, err
	}
	if out.RetryBudget, err = istioRetryBudget(tp.RetryBudget, base+".retryBudget"); err != nil {
		return nil, err
	}
	return out, nil
}

// setField is one of Istio's fields and whether an object sets it.
type setField struct {
	name string
	set  bool
}

// unsupported refuses the first of fields that is set, as a field under base that the
// waypoint does not implement; detail, if any, follows "not supported".
func unsupported(base, detail string, fields ...setField) error {
	for _, f := range fields {
		if f.set {
			return &fieldErr{base + "." + f.name, fmt.Errorf("not supported%s", detail)}
		}
	}
	return nil
}

// istioPortLevel compiles portLevelSettings into the policies by Service port.
func istioPortLevel(settings []istioapi.PortTrafficPolicy, base string) (map[uint32]*configv1.TrafficPolicy, error) {
	var portLevel map[uint32]*configv1.TrafficPolicy
	for i, pl := range settings {
		f := fmt.Sprintf("%s.portLevelSettings[%d]", base, i)
		if pl.Port == nil || pl.Port.Number == 0 || pl.Port.Number > 65535 {
			return nil, &fieldErr{f + ".port.number", fmt.Errorf("a port from 1 to 65535 is required")}
		}
		pp, err := istioTrafficPolicy(&istioapi.TrafficPolicy{PortSettings: pl.PortSettings}, f)
		if err != nil {
			return nil, err
		}
		if portLevel == nil {
			portLevel = map[uint32]*configv1.TrafficPolicy{}
		}
		if _, dup := portLevel[pl.Port.Number]; dup {
			return nil, &fieldErr{f + ".port.number", fmt.Errorf("%d is set twice", pl.Port.Number)}
		}
		portLevel[pl.Port.Number] = pp
	}
	return portLevel, nil
}

// istioTLS accepts only the modes that leave the mesh's own TLS alone. field is tls's path.
func istioTLS(tls json.RawMessage, field string) error {
	if len(tls) == 0 {
		return nil
	}
	// Between proxies the mesh always speaks mutual TLS (HBONE): ISTIO_MUTUAL, and DISABLE
	// for plaintext to the pod, say nothing more. TLS origination is not supported.
	var t struct {
		Mode string `json:"mode"`
	}
	if err := json.Unmarshal(tls, &t); err != nil || (t.Mode != "ISTIO_MUTUAL" && t.Mode != "DISABLE" && t.Mode != "") {
		return &fieldErr{field + ".mode", fmt.Errorf("%q is not supported (ISTIO_MUTUAL or DISABLE: the mesh's own mutual TLS)", t.Mode)}
	}
	return nil
}

// istioLoadBalancer compiles loadBalancer (field is its path); nil for none.
func istioLoadBalancer(lb *istioapi.LoadBalancerSettings, field string) (*configv1.TrafficPolicy_LoadBalancer, error) {
	if lb == nil {
		return nil, nil
	}
	if err := unsupported(field, "",
		setField{"localityLbSetting", len(lb.LocalityLbSetting) > 0}, setField{"zoneAwareLbSetting", len(lb.ZoneAwareLbSetting) > 0},
		setField{"warmupDurationSecs", lb.WarmupDurationSecs != ""}, setField{"warmup", len(lb.Warmup) > 0}); err != nil {
		return nil, err
	}
	o := &configv1.TrafficPolicy_LoadBalancer{}
	switch lb.Simple {
	case "", "UNSPECIFIED":
	case "ROUND_ROBIN":
		o.Simple = configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN
	case "LEAST_REQUEST", "LEAST_CONN":
		o.Simple = configv1.TrafficPolicy_LoadBalancer_LEAST_REQUEST
	case "RANDOM":
		o.Simple = configv1.TrafficPolicy_LoadBalancer_RANDOM
	default:
		return nil, &fieldErr{field + ".simple", fmt.Errorf("%q is not supported (ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM)", lb.Simple)}
	}
	if ch := lb.ConsistentHash; ch != nil {
		if lb.Simple != "" {
			return nil, &fieldErr{field + ".consistentHash", fmt.Errorf("simple and consistentHash are mutually exclusive")}
		}
		if err := istioConsistentHash(ch, field+".consistentHash", o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// istioConsistentHash sets o's hash key from consistentHash (field is its path).
func istioConsistentHash(ch *istioapi.ConsistentHash, field string, o *configv1.TrafficPolicy_LoadBalancer) error {
	if err := unsupported(field, " (httpHeaderName, httpQueryParameterName, useSourceIp; ambit hashes by rendezvous)",
		setField{"httpCookie", len(ch.HTTPCookie) > 0}, setField{"ringHash", len(ch.RingHash) > 0},
		setField{"maglev", len(ch.Maglev) > 0}, setField{"minimumRingSize", ch.MinimumRingSize != 0}); err != nil {
		return err
	}
	n := 0
	for _, set := range []bool{ch.HTTPHeaderName != "", ch.UseSourceIP, ch.HTTPQueryParameterName != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return &fieldErr{field, fmt.Errorf("needs exactly one of httpHeaderName, httpQueryParameterName, useSourceIp")}
	}
	o.HashHeader, o.HashSourceIp, o.HashQueryParameter = ch.HTTPHeaderName, ch.UseSourceIP, ch.HTTPQueryParameterName
	return nil
}

// istioConnectionPool compiles connectionPool (field is its path); nil for none.
func istioConnectionPool(cp *istioapi.ConnectionPoolSettings, field string) (*configv1.TrafficPolicy_ConnectionPool, error) {
	if cp == nil {
		return nil, nil
	}
	o := &configv1.TrafficPolicy_ConnectionPool{}
	if t := cp.TCP; t != nil {
		if err := istioTCPPool(t, field+".tcp", o); err != nil {
			return nil, err
		}
	}
	if h := cp.HTTP; h != nil {
		if err := istioHTTPPool(h, field+".http", o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// istioTCPPool sets o's connection limit and connect timeout from connectionPool.tcp.
func istioTCPPool(t *istioapi.TCPSettings, field string, o *configv1.TrafficPolicy_ConnectionPool) error {
	if err := unsupported(field, "", setField{"tcpKeepalive", len(t.TCPKeepalive) > 0},
		setField{"maxConnectionDuration", t.MaxConnectionDuration != ""}, setField{"idleTimeout", t.IdleTimeout != ""}); err != nil {
		return err
	}
	if t.MaxConnections < 0 {
		return &fieldErr{field + ".maxConnections", fmt.Errorf("%d is negative", t.MaxConnections)}
	}
	o.MaxConnections = uint32(t.MaxConnections)
	if t.ConnectTimeout != "" {
		d, err := boundedDuration(t.ConnectTimeout, 24*time.Hour, "24h")
		if err != nil {
			return &fieldErr{field + ".connectTimeout", err}
		}
		o.ConnectTimeout = durationpb.New(d)
	}
	return nil
}

// istioHTTPPool sets o's request limits from connectionPool.http.
func istioHTTPPool(h *istioapi.HTTPSettings, field string, o *configv1.TrafficPolicy_ConnectionPool) error {
	if err := unsupported(field, "",
		setField{"maxRequestsPerConnection", h.MaxRequestsPerConnection != 0}, setField{"idleTimeout", h.IdleTimeout != ""},
		setField{"h2UpgradePolicy", h.H2UpgradePolicy != "" && h.H2UpgradePolicy != "DEFAULT"}, setField{"useClientProtocol", h.UseClientProtocol},
		setField{"maxConcurrentStreams", h.MaxConcurrentStreams != 0}, setField{"http2KeepAlive", len(h.HTTP2KeepAlive) > 0}); err != nil {
		return err
	}
	for _, v := range []struct {
		name string
		n    int32
	}{{"http1MaxPendingRequests", h.HTTP1MaxPendingRequests}, {"http2MaxRequests", h.HTTP2MaxRequests}, {"maxRetries", h.MaxRetries}} {
		if v.n < 0 {
			return &fieldErr{field + "." + v.name, fmt.Errorf("%d is negative", v.n)}
		}
	}
	o.MaxPendingRequests, o.MaxRequests, o.MaxRetries = uint32(h.HTTP1MaxPendingRequests), uint32(h.HTTP2MaxRequests), uint32(h.MaxRetries)
	return nil
}

// istioOutlierDetection compiles outlierDetection (field is its path); nil for none.
func istioOutlierDetection(od *istioapi.OutlierDetection, field string) (*configv1.TrafficPolicy_OutlierDetection, error) {
	if od == nil {
		return nil, nil
	}
	if err := unsupported(field, "",
		setField{"splitExternalLocalOriginErrors", od.SplitExternalLocalOriginErrors}, setField{"consecutiveLocalOriginFailures", od.ConsecutiveLocalOriginFailures != nil},
		setField{"outlierDetectionHttpErrorCodes", len(od.OutlierDetectionHTTPErrorCodes) > 0}, setField{"minHealthPercent", od.MinHealthPercent != 0}); err != nil {
		return nil, err
	}
	o := &configv1.TrafficPolicy_OutlierDetection{}
	o.Consecutive_5Xx = 5 // Istio's default; 0 turns it off
	if od.Consecutive5xxErrors != nil {
		o.Consecutive_5Xx = *od.Consecutive5xxErrors
	}
	if od.ConsecutiveGatewayErrors != nil {
		o.ConsecutiveGatewayErrors = *od.ConsecutiveGatewayErrors
	} else if od.ConsecutiveErrors > 0 { // deprecated: gateway errors
		o.ConsecutiveGatewayErrors = uint32(od.ConsecutiveErrors)
	}
	if od.BaseEjectionTime != "" {
		d, err := boundedDuration(od.BaseEjectionTime, maxEjection, maxEjection.String())
		if err != nil {
			return nil, &fieldErr{field + ".baseEjectionTime", err}
		}
		o.BaseEjectionTime = durationpb.New(d)
	}
	if od.Interval != "" {
		if _, err := istioDuration(od.Interval); err != nil {
			return nil, &fieldErr{field + ".interval", err}
		}
	}
	if od.MaxEjectionPercent < 0 || od.MaxEjectionPercent > 100 {
		return nil, &fieldErr{field + ".maxEjectionPercent", fmt.Errorf("%d is not in [0, 100]", od.MaxEjectionPercent)}
	}
	o.MaxEjectionPercent = uint32(od.MaxEjectionPercent)
	return o, nil
}

// istioRetryBudget compiles retryBudget (field is its path); nil for none.
func istioRetryBudget(rb *istioapi.RetryBudget, field string) (*configv1.TrafficPolicy_RetryBudget, error) {
	if rb == nil {
		return nil, nil
	}
	if rb.BudgetInterval != "" {
		return nil, &fieldErr{field + ".budgetInterval", fmt.Errorf("not supported")}
	}
	o := &configv1.TrafficPolicy_RetryBudget{MinRetryConcurrency: rb.MinRetryConcurrency}
	if rb.Percent != nil {
		if *rb.Percent < 0 || *rb.Percent > 100 {
			return nil, &fieldErr{field + ".percent", fmt.Errorf("%v is not in [0, 100]", *rb.Percent)}
		}
		o.Percent = *rb.Percent
	}
	return o, nil
}

// boundedDuration parses an Istio duration of at most limit (named as the error says it).
func boundedDuration(s string, limit time.Duration, limitName string) (time.Duration, error) {
	d, err := istioDuration(s)
	if err != nil {
		return 0, err
	}
	if d > limit {
		return 0, fmt.Errorf("%s exceeds %s", d, limitName)
	}
	return d, nil
}

// mergePolicy lays a subset's policy over its host's: each part the subset sets replaces the
// host's (as Istio merges them).
func mergePolicy(host, subset *configv1.TrafficPolicy) *configv1.TrafficPolicy {
	if subset == nil {
		return host
	}
	if host == nil {
		return subset
	}
	out := &configv1.TrafficPolicy{LoadBalancer: host.LoadBalancer, ConnectionPool: host.ConnectionPool,
		OutlierDetection: host.OutlierDetection, RetryBudget: host.RetryBudget, PortLevel: host.PortLevel}
	if len(subset.PortLevel) > 0 {
		out.PortLevel = subset.PortLevel
	}
	if subset.LoadBalancer != nil {
		out.LoadBalancer = subset.LoadBalancer
	}
	if subset.ConnectionPool != nil {
		out.ConnectionPool = subset.ConnectionPool
	}
	if subset.OutlierDetection != nil {
		out.OutlierDetection = subset.OutlierDetection
	}
	if subset.RetryBudget != nil {
		out.RetryBudget = subset.RetryBudget
	}
	return out
}

// maxEjection bounds baseEjectionTime, as the waypoint does.
const maxEjection = time.Hour
