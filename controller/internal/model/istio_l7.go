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
		case rd.DerivePort != "":
			return &fieldErr{f + ".derivePort", fmt.Errorf("not supported")}
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
		r.Redirect = &configv1.Redirect{Path: rd.URI, Authority: rd.Authority, Port: rd.Port, Scheme: rd.Scheme, Code: rd.RedirectCode}
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
	merge := func(dst **configv1.HeaderOps, ops *istioapi.HeaderOperations, f string) error {
		if ops == nil {
			return nil
		}
		if *dst == nil {
			*dst = &configv1.HeaderOps{}
		}
		d := *dst
		for k, v := range ops.Set {
			if k == "" {
				return &fieldErr{f + ".set", fmt.Errorf("empty header name")}
			}
			if d.Set == nil {
				d.Set = map[string]string{}
			}
			d.Set[k] = v
		}
		for k, v := range ops.Add {
			if k == "" {
				return &fieldErr{f + ".add", fmt.Errorf("empty header name")}
			}
			if d.Add == nil {
				d.Add = map[string]string{}
			}
			d.Add[k] = v
		}
		d.Remove = append(d.Remove, ops.Remove...)
		return nil
	}
	if err := merge(&r.RequestHeaders, h.Request, field+".request"); err != nil {
		return err
	}
	return merge(&r.ResponseHeaders, h.Response, field+".response")
}

// istioTrafficPolicy compiles a DestinationRule's trafficPolicy; what the waypoint does not
// implement is refused with an error naming the field.
func istioTrafficPolicy(tp *istioapi.TrafficPolicy, base string) (*configv1.TrafficPolicy, error) {
	if tp == nil {
		return nil, nil
	}
	bad := func(field string, format string, args ...any) error {
		return &fieldErr{base + "." + field, fmt.Errorf(format, args...)}
	}
	var portLevel map[uint32]*configv1.TrafficPolicy
	for _, u := range []struct {
		field string
		set   bool
	}{
		{"tunnel", len(tp.Tunnel) > 0}, {"proxyProtocol", len(tp.ProxyProtocol) > 0},
	} {
		if u.set {
			return nil, bad(u.field, "not supported")
		}
	}
	for i, pl := range tp.PortLevelSettings {
		f := fmt.Sprintf("portLevelSettings[%d]", i)
		if pl.Port == nil || pl.Port.Number == 0 || pl.Port.Number > 65535 {
			return nil, bad(f+".port.number", "a port from 1 to 65535 is required")
		}
		pp, err := istioTrafficPolicy(&istioapi.TrafficPolicy{LoadBalancer: pl.LoadBalancer, ConnectionPool: pl.ConnectionPool,
			OutlierDetection: pl.OutlierDetection, TLS: pl.TLS}, base+"."+f)
		if err != nil {
			return nil, err
		}
		if portLevel == nil {
			portLevel = map[uint32]*configv1.TrafficPolicy{}
		}
		if _, dup := portLevel[pl.Port.Number]; dup {
			return nil, bad(f+".port.number", "%d is set twice", pl.Port.Number)
		}
		portLevel[pl.Port.Number] = pp
	}
	if len(tp.TLS) > 0 {
		// Between proxies the mesh always speaks mutual TLS (HBONE): ISTIO_MUTUAL, and DISABLE
		// for plaintext to the pod, say nothing more. TLS origination is not supported.
		var t struct {
			Mode string `json:"mode"`
		}
		if err := json.Unmarshal(tp.TLS, &t); err != nil || (t.Mode != "ISTIO_MUTUAL" && t.Mode != "DISABLE" && t.Mode != "") {
			return nil, bad("tls.mode", "%q is not supported (ISTIO_MUTUAL or DISABLE: the mesh's own mutual TLS)", t.Mode)
		}
	}
	out := &configv1.TrafficPolicy{PortLevel: portLevel}
	if lb := tp.LoadBalancer; lb != nil {
		for _, u := range []struct {
			field string
			set   bool
		}{
			{"localityLbSetting", len(lb.LocalityLbSetting) > 0}, {"zoneAwareLbSetting", len(lb.ZoneAwareLbSetting) > 0},
			{"warmupDurationSecs", lb.WarmupDurationSecs != ""}, {"warmup", len(lb.Warmup) > 0},
		} {
			if u.set {
				return nil, bad("loadBalancer."+u.field, "not supported")
			}
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
			return nil, bad("loadBalancer.simple", "%q is not supported (ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM)", lb.Simple)
		}
		if ch := lb.ConsistentHash; ch != nil {
			if lb.Simple != "" {
				return nil, bad("loadBalancer.consistentHash", "simple and consistentHash are mutually exclusive")
			}
			for _, u := range []struct {
				field string
				set   bool
			}{
				{"httpCookie", len(ch.HTTPCookie) > 0},
				{"ringHash", len(ch.RingHash) > 0}, {"maglev", len(ch.Maglev) > 0}, {"minimumRingSize", ch.MinimumRingSize != 0},
			} {
				if u.set {
					return nil, bad("loadBalancer.consistentHash."+u.field, "not supported (httpHeaderName, httpQueryParameterName, useSourceIp; ambit hashes by rendezvous)")
				}
			}
			n := 0
			for _, set := range []bool{ch.HTTPHeaderName != "", ch.UseSourceIP, ch.HTTPQueryParameterName != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				return nil, bad("loadBalancer.consistentHash", "needs exactly one of httpHeaderName, httpQueryParameterName, useSourceIp")
			}
			o.HashHeader, o.HashSourceIp, o.HashQueryParameter = ch.HTTPHeaderName, ch.UseSourceIP, ch.HTTPQueryParameterName
		}
		out.LoadBalancer = o
	}
	if cp := tp.ConnectionPool; cp != nil {
		o := &configv1.TrafficPolicy_ConnectionPool{}
		if t := cp.TCP; t != nil {
			for _, u := range []struct {
				field string
				set   bool
			}{
				{"tcpKeepalive", len(t.TCPKeepalive) > 0},
				{"maxConnectionDuration", t.MaxConnectionDuration != ""}, {"idleTimeout", t.IdleTimeout != ""},
			} {
				if u.set {
					return nil, bad("connectionPool.tcp."+u.field, "not supported")
				}
			}
			if t.MaxConnections < 0 {
				return nil, bad("connectionPool.tcp.maxConnections", "%d is negative", t.MaxConnections)
			}
			o.MaxConnections = uint32(t.MaxConnections)
			if t.ConnectTimeout != "" {
				d, err := istioDuration(t.ConnectTimeout)
				if err != nil || d > 24*time.Hour {
					if err == nil {
						err = fmt.Errorf("%s exceeds 24h", d)
					}
					return nil, &fieldErr{base + ".connectionPool.tcp.connectTimeout", err}
				}
				o.ConnectTimeout = durationpb.New(d)
			}
		}
		if h := cp.HTTP; h != nil {
			for _, u := range []struct {
				field string
				set   bool
			}{
				{"maxRequestsPerConnection", h.MaxRequestsPerConnection != 0}, {"idleTimeout", h.IdleTimeout != ""},
				{"h2UpgradePolicy", h.H2UpgradePolicy != "" && h.H2UpgradePolicy != "DEFAULT"}, {"useClientProtocol", h.UseClientProtocol},
				{"maxConcurrentStreams", h.MaxConcurrentStreams != 0}, {"http2KeepAlive", len(h.HTTP2KeepAlive) > 0},
			} {
				if u.set {
					return nil, bad("connectionPool.http."+u.field, "not supported")
				}
			}
			for f, v := range map[string]int32{"http1MaxPendingRequests": h.HTTP1MaxPendingRequests, "http2MaxRequests": h.HTTP2MaxRequests, "maxRetries": h.MaxRetries} {
				if v < 0 {
					return nil, bad("connectionPool.http."+f, "%d is negative", v)
				}
			}
			o.MaxPendingRequests, o.MaxRequests, o.MaxRetries = uint32(h.HTTP1MaxPendingRequests), uint32(h.HTTP2MaxRequests), uint32(h.MaxRetries)
		}
		out.ConnectionPool = o
	}
	if od := tp.OutlierDetection; od != nil {
		for _, u := range []struct {
			field string
			set   bool
		}{
			{"splitExternalLocalOriginErrors", od.SplitExternalLocalOriginErrors}, {"consecutiveLocalOriginFailures", od.ConsecutiveLocalOriginFailures != nil},
			{"outlierDetectionHttpErrorCodes", len(od.OutlierDetectionHTTPErrorCodes) > 0}, {"minHealthPercent", od.MinHealthPercent != 0},
		} {
			if u.set {
				return nil, bad("outlierDetection."+u.field, "not supported")
			}
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
			d, err := istioDuration(od.BaseEjectionTime)
			if err != nil || d > maxEjection {
				if err == nil {
					err = fmt.Errorf("%s exceeds %s", d, maxEjection)
				}
				return nil, &fieldErr{base + ".outlierDetection.baseEjectionTime", err}
			}
			o.BaseEjectionTime = durationpb.New(d)
		}
		if od.Interval != "" {
			if _, err := istioDuration(od.Interval); err != nil {
				return nil, &fieldErr{base + ".outlierDetection.interval", err}
			}
		}
		if od.MaxEjectionPercent < 0 || od.MaxEjectionPercent > 100 {
			return nil, bad("outlierDetection.maxEjectionPercent", "%d is not in [0, 100]", od.MaxEjectionPercent)
		}
		o.MaxEjectionPercent = uint32(od.MaxEjectionPercent)
		out.OutlierDetection = o
	}
	if rb := tp.RetryBudget; rb != nil {
		if rb.BudgetInterval != "" {
			return nil, bad("retryBudget.budgetInterval", "not supported")
		}
		o := &configv1.TrafficPolicy_RetryBudget{MinRetryConcurrency: rb.MinRetryConcurrency}
		if rb.Percent != nil {
			if *rb.Percent < 0 || *rb.Percent > 100 {
				return nil, bad("retryBudget.percent", "%v is not in [0, 100]", *rb.Percent)
			}
			o.Percent = *rb.Percent
		}
		out.RetryBudget = o
	}
	return out, nil
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
