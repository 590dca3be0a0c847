package model

import (
	"fmt"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"ambit.dev/controller/internal/istioapi"
)

// Gateway API route filters compile onto the same Route fields as a VirtualService's
// headers, rewrite, redirect, mirrors and corsPolicy, so the waypoint does one thing for
// both. Errors are *fieldErr relative to the rule (".filters[i]...").

// routeFilters compiles the filters of one rule onto r. matches are the rule's, for the
// checks ReplacePrefixMatch needs; backends says whether the rule has backendRefs.
func routeFilters(filters []gatewayv1.HTTPRouteFilter, matches []gatewayv1.HTTPRouteMatch, backends bool, ns, domain string, r *configv1.Route) *fieldErr {
	seen := map[gatewayv1.HTTPRouteFilterType]bool{}
	for i, f := range filters {
		ff := fmt.Sprintf(".filters[%d]", i)
		if seen[f.Type] && f.Type != gatewayv1.HTTPRouteFilterRequestMirror {
			return &fieldErr{ff + ".type", fmt.Errorf("%s is repeated: one per rule", f.Type)}
		}
		seen[f.Type] = true
		if err := routeFilter(f, ff, ns, domain, r); err != nil {
			return err
		}
	}
	switch {
	case r.Redirect != nil && r.Rewrite != nil:
		return &fieldErr{".filters", fmt.Errorf("RequestRedirect and URLRewrite are mutually exclusive")}
	case r.Redirect != nil && backends:
		return &fieldErr{".filters", fmt.Errorf("RequestRedirect and backendRefs are mutually exclusive")}
	case (r.Rewrite != nil && r.Rewrite.Path != "" && !r.Rewrite.FullPath) || (r.Redirect != nil && r.Redirect.ReplacePrefix):
		if !onePrefixMatch(matches) {
			return &fieldErr{".matches", fmt.Errorf("path.replacePrefixMatch needs exactly one match, of type PathPrefix")}
		}
	}
	return nil
}

// routeFilter compiles one filter (ff is its field path) onto r.
func routeFilter(f gatewayv1.HTTPRouteFilter, ff, ns, domain string, r *configv1.Route) *fieldErr {
	var err *fieldErr
	switch f.Type {
	case gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier:
		return headerFilter(f, ff, &r.RequestHeaders, &r.ResponseHeaders)
	case gatewayv1.HTTPRouteFilterURLRewrite:
		if f.URLRewrite == nil {
			return missing(ff, "urlRewrite", f.Type)
		}
		r.Rewrite, err = urlRewrite(f.URLRewrite, ff+".urlRewrite")
	case gatewayv1.HTTPRouteFilterRequestRedirect:
		if f.RequestRedirect == nil {
			return missing(ff, "requestRedirect", f.Type)
		}
		r.Redirect, err = requestRedirect(f.RequestRedirect, ff+".requestRedirect")
	case gatewayv1.HTTPRouteFilterRequestMirror:
		if f.RequestMirror == nil {
			return missing(ff, "requestMirror", f.Type)
		}
		var m *configv1.Mirror
		if m, err = requestMirror(f.RequestMirror, ff+".requestMirror", ns, domain); err == nil {
			r.Mirrors = append(r.Mirrors, m)
		}
	case gatewayv1.HTTPRouteFilterCORS:
		if f.CORS == nil {
			return missing(ff, "cors", f.Type)
		}
		r.Cors, err = corsFilter(f.CORS, ff+".cors")
	case gatewayv1.HTTPRouteFilterExtensionRef:
		return &fieldErr{ff + ".extensionRef", fmt.Errorf("not supported: ambit has no filter extensions")}
	case gatewayv1.HTTPRouteFilterExternalAuth:
		return &fieldErr{ff + ".externalAuth", fmt.Errorf("not supported")}
	default:
		return &fieldErr{ff + ".type", fmt.Errorf("%q is not supported", f.Type)}
	}
	return err
}

// backendFilters compiles the filters of one backendRef (Gateway API lets implementations
// choose which; ambit edits headers per backend) onto b.
func backendFilters(filters []gatewayv1.HTTPRouteFilter, b *configv1.Backend) *fieldErr {
	for i, f := range filters {
		ff := fmt.Sprintf(".filters[%d]", i)
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			if err := headerFilter(f, ff, &b.RequestHeaders, &b.ResponseHeaders); err != nil {
				return err
			}
		default:
			return &fieldErr{ff + ".type", fmt.Errorf("%q is not supported on a backendRef (RequestHeaderModifier, ResponseHeaderModifier)", f.Type)}
		}
	}
	return nil
}

// grpcFilters are a GRPCRoute's filters as the HTTPRoute filters they are the same as; a type
// GRPCRoute does not have is refused (relative to the filters' owner).
func grpcFilters(in []gatewayv1.GRPCRouteFilter) ([]gatewayv1.HTTPRouteFilter, *fieldErr) {
	out := make([]gatewayv1.HTTPRouteFilter, 0, len(in))
	for i, f := range in {
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier, gatewayv1.GRPCRouteFilterResponseHeaderModifier,
			gatewayv1.GRPCRouteFilterRequestMirror, gatewayv1.GRPCRouteFilterExtensionRef:
		default:
			return nil, &fieldErr{fmt.Sprintf(".filters[%d].type", i), fmt.Errorf("%q is not a GRPCRoute filter", f.Type)}
		}
		out = append(out, gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterType(f.Type), RequestHeaderModifier: f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier, RequestMirror: f.RequestMirror, ExtensionRef: f.ExtensionRef})
	}
	return out, nil
}

func missing(ff, field string, typ gatewayv1.HTTPRouteFilterType) *fieldErr {
	return &fieldErr{ff + "." + field, fmt.Errorf("required by type %s", typ)}
}

// headerFilter merges a Request- or ResponseHeaderModifier into *req or *resp.
func headerFilter(f gatewayv1.HTTPRouteFilter, ff string, req, resp **configv1.HeaderOps) *fieldErr {
	h, dst, name := f.RequestHeaderModifier, req, "requestHeaderModifier"
	if f.Type == gatewayv1.HTTPRouteFilterResponseHeaderModifier {
		h, dst, name = f.ResponseHeaderModifier, resp, "responseHeaderModifier"
	}
	if h == nil {
		return missing(ff, name, f.Type)
	}
	ops := &istioapi.HeaderOperations{Remove: h.Remove}
	for _, l := range []struct {
		in  []gatewayv1.HTTPHeader
		out *map[string]string
	}{{h.Set, &ops.Set}, {h.Add, &ops.Add}} {
		for _, hv := range l.in {
			if *l.out == nil {
				*l.out = map[string]string{}
			}
			(*l.out)[string(hv.Name)] = hv.Value
		}
	}
	return mergeHeaderOps(dst, ops, ff+"."+name)
}

// pathModifier is a rewrite's or redirect's new path, and whether it replaces only the
// matched prefix (ReplacePrefixMatch) rather than the whole path (ReplaceFullPath).
func pathModifier(p *gatewayv1.HTTPPathModifier, f string) (string, bool, *fieldErr) {
	var v *string
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		v = p.ReplaceFullPath
		if p.ReplacePrefixMatch != nil {
			return "", false, &fieldErr{f + ".replacePrefixMatch", fmt.Errorf("set with type ReplaceFullPath")}
		}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		v = p.ReplacePrefixMatch
		if p.ReplaceFullPath != nil {
			return "", false, &fieldErr{f + ".replaceFullPath", fmt.Errorf("set with type ReplacePrefixMatch")}
		}
	default:
		return "", false, &fieldErr{f + ".type", fmt.Errorf("%q is not ReplaceFullPath or ReplacePrefixMatch", p.Type)}
	}
	field := f + ".replaceFullPath"
	prefix := p.Type == gatewayv1.PrefixMatchHTTPPathModifier
	if prefix {
		field = f + ".replacePrefixMatch"
	}
	switch {
	case v == nil:
		return "", false, &fieldErr{field, fmt.Errorf("required by type %s", p.Type)}
	case prefix && *v == "":
		return "/", true, nil // the prefix removed
	case !strings.HasPrefix(*v, "/") || strings.ContainsAny(*v, "?# \t"):
		return "", false, &fieldErr{field, fmt.Errorf("%q must start with / and hold no query, fragment or space", *v)}
	}
	return *v, prefix, nil
}

// onePrefixMatch: matches is one PathPrefix match (or none: the default, PathPrefix /).
func onePrefixMatch(matches []gatewayv1.HTTPRouteMatch) bool {
	switch {
	case len(matches) == 0:
		return true
	case len(matches) > 1:
		return false
	}
	p := matches[0].Path
	return p == nil || p.Type == nil || *p.Type == gatewayv1.PathMatchPathPrefix
}

// urlRewrite compiles a URLRewrite filter (f is its field path).
func urlRewrite(rw *gatewayv1.HTTPURLRewriteFilter, f string) (*configv1.Rewrite, *fieldErr) {
	out := &configv1.Rewrite{}
	if rw.Hostname != nil {
		out.Authority = string(*rw.Hostname)
	}
	if rw.Path != nil {
		path, prefix, err := pathModifier(rw.Path, f+".path")
		if err != nil {
			return nil, err
		}
		out.Path, out.FullPath = path, !prefix
	}
	return out, nil
}

// requestRedirect compiles a RequestRedirect filter (f is its field path). As Gateway API
// asks, an unset port is the scheme's default when scheme is set, else the request's; the
// status defaults to 302.
func requestRedirect(rd *gatewayv1.HTTPRequestRedirectFilter, f string) (*configv1.Redirect, *fieldErr) {
	out := &configv1.Redirect{Code: 302, DerivePort: configv1.Redirect_FROM_REQUEST_PORT}
	if rd.Scheme != nil {
		if *rd.Scheme != "http" && *rd.Scheme != "https" {
			return nil, &fieldErr{f + ".scheme", fmt.Errorf("%q is not http or https", *rd.Scheme)}
		}
		out.Scheme, out.DerivePort = *rd.Scheme, configv1.Redirect_FROM_PROTOCOL_DEFAULT
	}
	if rd.Hostname != nil {
		if *rd.Hostname == "" || strings.ContainsAny(string(*rd.Hostname), ":/ ") {
			return nil, &fieldErr{f + ".hostname", fmt.Errorf("%q is not a hostname", *rd.Hostname)}
		}
		out.Authority = string(*rd.Hostname)
	}
	if rd.Port != nil {
		if *rd.Port < 1 || *rd.Port > 65535 {
			return nil, &fieldErr{f + ".port", fmt.Errorf("%d out of range", *rd.Port)}
		}
		out.Port = uint32(*rd.Port)
	}
	if rd.StatusCode != nil {
		switch *rd.StatusCode {
		case 301, 302, 303, 307, 308:
			out.Code = uint32(*rd.StatusCode)
		default:
			return nil, &fieldErr{f + ".statusCode", fmt.Errorf("%d is not 301, 302, 303, 307 or 308", *rd.StatusCode)}
		}
	}
	if rd.Path != nil {
		path, prefix, err := pathModifier(rd.Path, f+".path")
		if err != nil {
			return nil, err
		}
		out.Path, out.ReplacePrefix = path, prefix
	}
	return out, nil
}

// requestMirror compiles a RequestMirror filter (f is its field path): its backendRef is a
// Service port, as for a backendRef; percent or fraction, else 100 %.
func requestMirror(m *gatewayv1.HTTPRequestMirrorFilter, f, ns, domain string) (*configv1.Mirror, *fieldErr) {
	be, err := convertBackend(gatewayv1.BackendRef{BackendObjectReference: m.BackendRef}, ns, domain)
	if err != nil {
		e := err.(*fieldErr)
		return nil, &fieldErr{f + ".backendRef" + e.field, e.err}
	}
	if be.Port == 0 {
		return nil, &fieldErr{f + ".backendRef.port", fmt.Errorf("required for a Service")}
	}
	out := &configv1.Mirror{Hostname: be.Hostname, Port: be.Port, Percentage: 100}
	switch p, fr := m.Percent, m.Fraction; {
	case p != nil && fr != nil:
		return nil, &fieldErr{f, fmt.Errorf("percent and fraction are mutually exclusive")}
	case p != nil:
		if *p < 0 || *p > 100 {
			return nil, &fieldErr{f + ".percent", fmt.Errorf("%d is not in [0, 100]", *p)}
		}
		out.Percentage = float64(*p)
	case fr != nil:
		den := int32(100)
		if fr.Denominator != nil {
			den = *fr.Denominator
		}
		if den < 1 || fr.Numerator < 0 || fr.Numerator > den {
			return nil, &fieldErr{f + ".fraction", fmt.Errorf("%d/%d is not a fraction in [0, 1]", fr.Numerator, den)}
		}
		out.Percentage = 100 * float64(fr.Numerator) / float64(den)
	}
	return out, nil
}

// corsStrings are a CORS filter's methods or header names as strings.
func corsStrings[S ~string](in []S) []string {
	var out []string
	for _, v := range in {
		out = append(out, string(v))
	}
	return out
}

// corsFilter compiles a CORS filter (f is its field path). An origin is "*" or exact: the
// waypoint matches origins exactly or by prefix, so a wildcard host is refused.
func corsFilter(c *gatewayv1.HTTPCORSFilter, f string) (*configv1.CorsPolicy, *fieldErr) {
	out := &configv1.CorsPolicy{AllowCredentials: c.AllowCredentials != nil && *c.AllowCredentials}
	for i, o := range c.AllowOrigins {
		if o != "*" && strings.Contains(string(o), "*") {
			return nil, &fieldErr{fmt.Sprintf("%s.allowOrigins[%d]", f, i), fmt.Errorf("%q: a wildcard in the host is not supported (\"*\" or an exact origin)", o)}
		}
		out.AllowOriginsExact = append(out.AllowOriginsExact, string(o))
	}
	for _, l := range []struct {
		name string
		in   []string
		out  *[]string
	}{{"allowMethods", corsStrings(c.AllowMethods), &out.AllowMethods}, {"allowHeaders", corsStrings(c.AllowHeaders), &out.AllowHeaders},
		{"exposeHeaders", corsStrings(c.ExposeHeaders), &out.ExposeHeaders}} {
		for i, v := range l.in {
			// With credentials a browser reads "*" literally; Gateway API asks for the
			// request's own values, which the waypoint does not echo.
			if v == "*" && out.AllowCredentials {
				return nil, &fieldErr{fmt.Sprintf("%s.%s[%d]", f, l.name, i), fmt.Errorf("\"*\" with allowCredentials is not supported: list the values")}
			}
		}
		*l.out = l.in
	}
	if c.MaxAge < 0 {
		return nil, &fieldErr{f + ".maxAge", fmt.Errorf("%d is negative", c.MaxAge)}
	}
	if c.MaxAge > 0 {
		out.MaxAge = durationpb.New(time.Duration(c.MaxAge) * time.Second)
	}
	return out, nil
}
