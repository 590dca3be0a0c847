// Package authz decides AuthorizationPolicy for ztunnel (L4) and the waypoint (L7): one
// implementation of the matching rules, so a policy means the same wherever it is enforced.
//
// The decision, as in Istio: a matching DENY policy denies; otherwise, if no ALLOW policy
// applies, the traffic is allowed; otherwise it is allowed only when an ALLOW policy
// matches. Where the request's L7 attributes are unknown (ztunnel, for a workload without a
// waypoint), a policy that names methods or paths cannot be decided, and the whole
// connection is denied: policy fails closed.
package authz

import (
	"fmt"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"

	configv1 "ambit.dev/proto/config/v1"
)

// Request is what a policy can look at.
type Request struct {
	// Principal is the peer's SPIFFE ID ("spiffe://td/ns/x/sa/y"); empty for plaintext.
	Principal string
	// Namespace is the namespace of the peer's identity; empty for plaintext.
	Namespace string
	// Source is the original client address.
	Source netip.Addr
	// Port is the destination (target) port.
	Port uint32
	// HTTP carries the L7 attributes; nil at L4.
	HTTP *HTTP
}

// HTTP holds the L7 attributes a waypoint knows.
type HTTP struct {
	Method, Path string
	// Headers are the request headers, keyed by canonical name (an http.Header), for
	// `when` conditions on request.headers[...].
	Headers map[string][]string
}

// Decision is the outcome and, for logs and metrics, why.
type Decision struct {
	Allow  bool
	Policy string // "namespace/name" of the deciding policy, if one decided
	Reason string
}

// Evaluate decides req against the policies that apply to the destination.
func Evaluate(policies []*configv1.Authorization, req Request) Decision {
	if req.HTTP == nil {
		for _, p := range policies {
			if needsL7(p) {
				return Decision{Policy: name(p), Reason: fmt.Sprintf("policy %s has HTTP rules (methods or paths) but the destination has no waypoint to enforce them: denying all traffic", name(p))}
			}
		}
	}
	for _, p := range policies {
		if p.GetAction() == configv1.Authorization_DENY && matches(p, req) {
			return Decision{Policy: name(p), Reason: "denied by policy " + name(p)}
		}
	}
	anyAllow := false
	for _, p := range policies {
		if p.GetAction() != configv1.Authorization_ALLOW {
			continue
		}
		anyAllow = true
		if matches(p, req) {
			return Decision{Allow: true, Policy: name(p), Reason: "allowed by policy " + name(p)}
		}
	}
	if anyAllow {
		return Decision{Reason: "no ALLOW policy matched"}
	}
	return Decision{Allow: true, Reason: "no policy applies"}
}

func name(p *configv1.Authorization) string { return p.GetNamespace() + "/" + p.GetName() }

// needsL7 reports whether any rule of p names HTTP attributes.
func needsL7(p *configv1.Authorization) bool {
	for _, r := range p.GetRules() {
		for _, op := range r.GetTo() {
			if len(op.GetMethods())+len(op.GetNotMethods())+len(op.GetPaths())+len(op.GetNotPaths()) > 0 {
				return true
			}
		}
		for _, c := range r.GetWhen() {
			if strings.HasPrefix(c.GetKey(), "request.") {
				return true
			}
		}
	}
	return false
}

func matches(p *configv1.Authorization, req Request) bool {
	deny := p.GetAction() == configv1.Authorization_DENY
	for _, r := range p.GetRules() {
		if ruleMatches(r, req, deny) {
			return true
		}
	}
	return false
}

func ruleMatches(r *configv1.Rule, req Request, deny bool) bool {
	for _, c := range r.GetWhen() {
		if !conditionHolds(c, req, deny) {
			return false
		}
	}
	from := len(r.GetFrom()) == 0
	for _, s := range r.GetFrom() {
		if sourceMatches(s, req) {
			from = true
			break
		}
	}
	if !from {
		return false
	}
	if len(r.GetTo()) == 0 {
		return true
	}
	for _, op := range r.GetTo() {
		if operationMatches(op, req) {
			return true
		}
	}
	return false
}

func sourceMatches(s *configv1.Source, req Request) bool {
	principal := strings.TrimPrefix(req.Principal, "spiffe://")
	return field(s.GetPrincipals(), s.GetNotPrincipals(), func(v string) bool {
		return req.Principal != "" && wildcard(strings.TrimPrefix(v, "spiffe://"), principal)
	}) && field(s.GetNamespaces(), s.GetNotNamespaces(), func(v string) bool {
		return req.Namespace != "" && wildcard(v, req.Namespace)
	}) && blocks(s.GetIpBlocks(), s.GetNotIpBlocks(), req.Source)
}

func operationMatches(op *configv1.Operation, req Request) bool {
	if !ports(op.GetPorts(), op.GetNotPorts(), req.Port) {
		return false
	}
	var method, path string
	if req.HTTP != nil {
		method, path = req.HTTP.Method, req.HTTP.Path
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
	}
	return field(op.GetMethods(), op.GetNotMethods(), func(v string) bool { return req.HTTP != nil && v == method }) &&
		field(op.GetPaths(), op.GetNotPaths(), func(v string) bool { return req.HTTP != nil && wildcard(v, path) })
}

// conditionHolds evaluates one `when` condition. A key it does not know fails closed: it
// never holds in an ALLOW policy and always holds in a DENY policy.
func conditionHolds(c *configv1.Condition, req Request, deny bool) bool {
	key := c.GetKey()
	str := func(v string, ok bool) bool {
		return field(c.GetValues(), c.GetNotValues(), func(p string) bool { return ok && wildcard(p, v) })
	}
	switch key {
	case "source.ip", "remote.ip":
		in := func(p string) bool {
			pfx, err := parseBlock(p)
			return err == nil && req.Source.IsValid() && pfx.Contains(req.Source.Unmap())
		}
		return field(c.GetValues(), c.GetNotValues(), in)
	case "source.namespace":
		return str(req.Namespace, req.Namespace != "")
	case "source.principal":
		return str(strings.TrimPrefix(req.Principal, "spiffe://"), req.Principal != "")
	case "destination.port":
		return field(c.GetValues(), c.GetNotValues(), func(p string) bool { return p == strconv.FormatUint(uint64(req.Port), 10) })
	}
	if name, ok := strings.CutPrefix(key, "request.headers["); ok && strings.HasSuffix(name, "]") && req.HTTP != nil {
		vs := req.HTTP.Headers[textproto.CanonicalMIMEHeaderKey(strings.TrimSuffix(name, "]"))]
		// Istio matches the header's value; several values are joined as Envoy sees them.
		return str(strings.Join(vs, ","), len(vs) > 0)
	}
	return deny
}

// parseBlock reads "a.b.c.d" or "a.b.c.d/n" (IPv6 alike), unmapped.
func parseBlock(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// field matches a positive list (empty = any) and a negative list (none may match).
func field(pos, neg []string, match func(string) bool) bool {
	if len(pos) > 0 {
		ok := false
		for _, v := range pos {
			if match(v) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, v := range neg {
		if match(v) {
			return false
		}
	}
	return true
}

func ports(pos, neg []uint32, port uint32) bool {
	if len(pos) > 0 {
		ok := false
		for _, p := range pos {
			ok = ok || p == port
		}
		if !ok {
			return false
		}
	}
	for _, p := range neg {
		if p == port {
			return false
		}
	}
	return true
}

func blocks(pos, neg []*configv1.IPBlock, ip netip.Addr) bool {
	in := func(b *configv1.IPBlock) bool {
		a, ok := netip.AddrFromSlice(b.GetAddress())
		if !ok || !ip.IsValid() {
			return false
		}
		pfx, err := a.Unmap().Prefix(int(b.GetLength()))
		return err == nil && pfx.Contains(ip.Unmap())
	}
	if len(pos) > 0 {
		ok := false
		for _, b := range pos {
			ok = ok || in(b)
		}
		if !ok {
			return false
		}
	}
	for _, b := range neg {
		if in(b) {
			return false
		}
	}
	return true
}

// wildcard matches Istio's literal patterns: "*" (any non-empty), "*suffix", "prefix*".
func wildcard(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	}
	return pattern == v
}
