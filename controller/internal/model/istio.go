package model

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"ambit.dev/controller/internal/istioapi"
)

// Istio's resources, read as Istio reads them (docs/traffic.md). Their kinds are named with
// their group in errors and in the Index, apart from ambit's kinds of the same name.
const (
	KindIstioVirtualService      = "VirtualService.networking.istio.io"
	KindIstioDestinationRule     = "DestinationRule.networking.istio.io"
	KindIstioAuthorizationPolicy = "AuthorizationPolicy.security.istio.io"
	KindIstioPeerAuthentication  = "PeerAuthentication.security.istio.io"

	// Istio's labels, aliases of ambit's: ambit's label wins when an object has both.
	LabelIstioDataplaneMode = "istio.io/dataplane-mode"
	LabelIstioUseWaypoint   = "istio.io/use-waypoint"
	LabelIstioWaypointFor   = "istio.io/waypoint-for"

	// istioPrefix starts the names of the Authorizations made from Istio's policies: a
	// Kubernetes name has no ':', so they never collide with ambit's policies.
	istioPrefix = "istio:"
	// istioPAPrefix names the DENY Authorization that carries a PeerAuthentication's
	// portLevelMtls.
	istioPAPrefix = "istio-peerauthn:"
)

// label reads an ambit label or, when the object lacks it, its Istio alias.
func label(labels map[string]string, ours, istios string) (string, bool) {
	if v, ok := labels[ours]; ok {
		return v, true
	}
	v, ok := labels[istios]
	return v, ok
}

// useWaypointLabel is the object's waypoint binding, ambit's label or Istio's.
func useWaypointLabel(labels map[string]string) (string, bool) {
	return label(labels, LabelUseWaypoint, LabelIstioUseWaypoint)
}

// dataplaneModeLabel is the object's enrolment, ambit's label or Istio's.
func dataplaneModeLabel(labels map[string]string) (string, bool) {
	return label(labels, LabelDataplaneMode, LabelIstioDataplaneMode)
}

// ResolveHost turns a host as Istio reads it in namespace ns into a Service hostname: "reviews"
// is reviews.<ns>.svc.<domain>, "reviews.shop" is reviews.shop.svc.<domain>, "reviews.shop.svc"
// gains the domain, and anything longer is taken as written.
func ResolveHost(host, ns, domain string) string {
	switch strings.Count(host, ".") {
	case 0:
		return Hostname(host, ns, domain)
	case 1:
		return host + ".svc." + domain
	}
	if strings.HasSuffix(host, ".svc") {
		return host + "." + domain
	}
	return host
}

// serviceOfHost returns "<ns>/<hostname>" for a Service hostname of this cluster's domain.
func serviceOfHost(host, domain string) (string, bool) {
	rest, ok := strings.CutSuffix(host, ".svc."+domain)
	if !ok {
		return "", false
	}
	name, ns, ok := strings.Cut(rest, ".")
	if !ok || name == "" || ns == "" || strings.Contains(ns, ".") {
		return "", false
	}
	return ns + "/" + host, true
}

// ---- AuthorizationPolicy ----

// ConvertIstioAuthorizationPolicy maps Istio's AuthorizationPolicy to an Authorization. What
// Istio has and ambit cannot enforce fails closed, as Istio's ztunnel does: a rule that needs
// it is dropped from an ALLOW policy (which then allows less) and made to match everything in
// a DENY policy (which then denies all it applies to); a CUSTOM policy denies everything.
// Values that are malformed refuse the policy with an error naming the field.
func ConvertIstioAuthorizationPolicy(p *istioapi.AuthorizationPolicy, opts Options) (*configv1.Authorization, error) {
	a, _, err := convertIstioAuthz(p, opts)
	return a, err
}

// convertIstioAuthz is ConvertIstioAuthorizationPolicy with what it applies only in part:
// one *ObjectError (Partial) per rule that fails closed, naming the field not enforced.
func convertIstioAuthz(p *istioapi.AuthorizationPolicy, opts Options) (*configv1.Authorization, []error, error) {
	bad := func(field, format string, args ...any) error {
		return objErr(KindIstioAuthorizationPolicy, p.Namespace, p.Name, field, format, args...)
	}
	out := &configv1.Authorization{Name: istioPrefix + p.Name, Namespace: p.Namespace}
	sp := p.Spec
	hasSel := sp.Selector != nil && len(sp.Selector.MatchLabels) > 0
	refs := sp.TargetRefs
	refField := "spec.targetRefs"
	if sp.TargetRef != nil {
		if len(refs) > 0 {
			return nil, nil, bad("spec.targetRef", "targetRef and targetRefs are mutually exclusive")
		}
		refs, refField = []istioapi.PolicyTargetReference{*sp.TargetRef}, "spec.targetRef"
	}
	switch {
	case hasSel && len(refs) > 0:
		return nil, nil, bad(refField, "selector and targetRefs are mutually exclusive")
	case hasSel, len(refs) > 0:
		out.Scope = configv1.Authorization_WORKLOAD_SELECTOR
	case p.Namespace == opts.RootNamespace:
		out.Scope = configv1.Authorization_GLOBAL
	default:
		out.Scope = configv1.Authorization_NAMESPACE
	}
	if hasSel {
		out.Selector = maps2(sp.Selector.MatchLabels)
	}
	for i, t := range refs {
		f := refField
		if refField == "spec.targetRefs" {
			f = fmt.Sprintf("%s[%d]", refField, i)
		}
		switch {
		case t.Kind == "Gateway" && t.Group == "gateway.networking.k8s.io":
		case t.Kind == "Service" && (t.Group == "" || t.Group == "core"):
		default:
			return nil, nil, bad(f+".kind", "%s (group %q) is not supported: a Gateway (gateway.networking.k8s.io) or a Service", t.Kind, t.Group)
		}
		if t.Name == "" {
			return nil, nil, bad(f+".name", "empty")
		}
		if t.Namespace != "" && t.Namespace != p.Namespace {
			return nil, nil, bad(f+".namespace", "%q: a target must be in the policy's namespace", t.Namespace)
		}
		out.TargetRefs = append(out.TargetRefs, &configv1.TargetRef{Group: t.Group, Kind: t.Kind, Name: t.Name})
	}
	switch sp.Action {
	case "", "ALLOW":
		out.Action = configv1.Authorization_ALLOW
	case "DENY":
		out.Action = configv1.Authorization_DENY
	case "AUDIT":
		// Audit decides nothing: a DENY policy without rules denies nothing.
		out.Action = configv1.Authorization_DENY
		return out, nil, nil
	case "CUSTOM":
		// An external authorizer ambit does not have: fail closed.
		out.Action = configv1.Authorization_DENY
		out.Rules = []*configv1.Rule{{}}
		e := objErr(KindIstioAuthorizationPolicy, p.Namespace, p.Name, "spec.action", "CUSTOM: no external authorizer: the policy denies every request it applies to")
		e.Partial = true
		return out, []error{e}, nil
	default:
		return nil, nil, bad("spec.action", "%q is not ALLOW, DENY, AUDIT or CUSTOM", sp.Action)
	}
	if len(sp.Provider) > 0 {
		return nil, nil, bad("spec.provider", "only with action CUSTOM")
	}
	deny := out.Action == configv1.Authorization_DENY
	var partial []error
	for i, r := range sp.Rules {
		rule, unenforced, err := istioRule(r, fmt.Sprintf("spec.rules[%d]", i), opts)
		if err != nil {
			e := err.(*fieldErr)
			return nil, nil, bad(e.field, "%w", e.err)
		}
		switch {
		case unenforced == "":
			out.Rules = append(out.Rules, rule)
			continue
		case deny:
			out.Rules = append(out.Rules, &configv1.Rule{}) // matches everything
		}
		// unenforced in ALLOW: the rule is left out and allows nothing.
		what := "the rule is left out of this ALLOW policy, which allows less"
		if deny {
			what = "the rule matches every request of this DENY policy"
		}
		e := objErr(KindIstioAuthorizationPolicy, p.Namespace, p.Name, unenforced, "not enforced by ambit: %s", what)
		e.Partial = true
		partial = append(partial, e)
	}
	return out, partial, nil
}

// istioRule converts one rule; unenforced names the first field it uses that ambit cannot
// enforce, "" for none.
func istioRule(r istioapi.Rule, base string, opts Options) (rule *configv1.Rule, unenforced string, err error) {
	rule = &configv1.Rule{}
	notEnforced := func(field string) {
		if unenforced == "" {
			unenforced = field
		}
	}
	for j, f := range r.From {
		fb := fmt.Sprintf("%s.from[%d].source", base, j)
		s := f.Source
		if s == nil {
			return nil, "", &fieldErr{fb, fmt.Errorf("missing")}
		}
		// Request authentication (JWT) and trust domains: not enforced.
		for _, f := range []setField{{"requestPrincipals", len(s.RequestPrincipals) > 0}, {"notRequestPrincipals", len(s.NotRequestPrincipals) > 0},
			{"trustDomains", len(s.TrustDomains) > 0}, {"notTrustDomains", len(s.NotTrustDomains) > 0}} {
			if f.set {
				notEnforced(fb + "." + f.name)
			}
		}
		if len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 && len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 {
			return nil, "", &fieldErr{fb + ".serviceAccounts", fmt.Errorf("cannot be set with principals or namespaces")}
		}
		src := &configv1.Source{
			Principals:    slices.Clone(s.Principals),
			NotPrincipals: slices.Clone(s.NotPrincipals),
			Namespaces:    slices.Clone(s.Namespaces),
			NotNamespaces: slices.Clone(s.NotNamespaces),
		}
		for k, sa := range s.ServiceAccounts {
			p, err := saPrincipal(sa, opts.TrustDomain)
			if err != nil {
				return nil, "", &fieldErr{fmt.Sprintf("%s.serviceAccounts[%d]", fb, k), err}
			}
			src.Principals = append(src.Principals, p)
		}
		for k, sa := range s.NotServiceAccounts {
			p, err := saPrincipal(sa, opts.TrustDomain)
			if err != nil {
				return nil, "", &fieldErr{fmt.Sprintf("%s.notServiceAccounts[%d]", fb, k), err}
			}
			src.NotPrincipals = append(src.NotPrincipals, p)
		}
		var err error
		if src.IpBlocks, err = ipBlocks(s.IPBlocks); err != nil {
			return nil, "", &fieldErr{fb + ".ipBlocks" + err.(*indexErr).at(), err.(*indexErr).err}
		}
		if src.NotIpBlocks, err = ipBlocks(s.NotIPBlocks); err != nil {
			return nil, "", &fieldErr{fb + ".notIpBlocks" + err.(*indexErr).at(), err.(*indexErr).err}
		}
		// remoteIpBlocks: the original client, which is what ambit's source address is (no
		// X-Forwarded-For is trusted). Both lists in one source would have to hold together,
		// which one field cannot say: fail closed.
		remote, err := ipBlocks(s.RemoteIPBlocks)
		if err != nil {
			return nil, "", &fieldErr{fb + ".remoteIpBlocks" + err.(*indexErr).at(), err.(*indexErr).err}
		}
		notRemote, err := ipBlocks(s.NotRemoteIPBlocks)
		if err != nil {
			return nil, "", &fieldErr{fb + ".notRemoteIpBlocks" + err.(*indexErr).at(), err.(*indexErr).err}
		}
		if len(remote) > 0 {
			if len(src.IpBlocks) > 0 {
				notEnforced(fb + ".remoteIpBlocks")
			}
			src.IpBlocks = remote
		}
		src.NotIpBlocks = append(src.NotIpBlocks, notRemote...)
		rule.From = append(rule.From, src)
	}
	for j, t := range r.To {
		ob := fmt.Sprintf("%s.to[%d].operation", base, j)
		o := t.Operation
		if o == nil {
			return nil, "", &fieldErr{ob, fmt.Errorf("missing")}
		}
		for _, f := range []setField{{"hosts", len(o.Hosts) > 0}, {"notHosts", len(o.NotHosts) > 0}} {
			if f.set {
				notEnforced(ob + "." + f.name) // host matching: not enforced
			}
		}
		op := &configv1.Operation{
			Methods:    slices.Clone(o.Methods),
			NotMethods: slices.Clone(o.NotMethods),
			Paths:      slices.Clone(o.Paths),
			NotPaths:   slices.Clone(o.NotPaths),
		}
		var err error
		if op.Ports, err = ports(o.Ports); err != nil {
			return nil, "", &fieldErr{ob + ".ports" + err.(*indexErr).at(), err.(*indexErr).err}
		}
		if op.NotPorts, err = ports(o.NotPorts); err != nil {
			return nil, "", &fieldErr{ob + ".notPorts" + err.(*indexErr).at(), err.(*indexErr).err}
		}
		rule.To = append(rule.To, op)
	}
	for j, c := range r.When {
		cb := fmt.Sprintf("%s.when[%d]", base, j)
		if c.Key == "" {
			return nil, "", &fieldErr{cb + ".key", fmt.Errorf("empty")}
		}
		if len(c.Values)+len(c.NotValues) == 0 {
			return nil, "", &fieldErr{cb, fmt.Errorf("values or notValues must be set")}
		}
		switch {
		case c.Key == "source.ip" || c.Key == "remote.ip":
			for k, v := range append(slices.Clone(c.Values), c.NotValues...) {
				if _, err := ipBlocks([]string{v}); err != nil {
					return nil, "", &fieldErr{fmt.Sprintf("%s.values[%d]", cb, k), err.(*indexErr).err}
				}
			}
		case c.Key == "destination.port":
			for k, v := range append(slices.Clone(c.Values), c.NotValues...) {
				if n, err := strconv.ParseUint(v, 10, 16); err != nil || n == 0 {
					return nil, "", &fieldErr{fmt.Sprintf("%s.values[%d]", cb, k), fmt.Errorf("invalid port %q", v)}
				}
			}
		case c.Key == "source.namespace" || c.Key == "source.principal":
		case strings.HasPrefix(c.Key, "request.headers[") && strings.HasSuffix(c.Key, "]") && len(c.Key) > len("request.headers[]"):
		default:
			notEnforced(cb + ".key") // request.auth.*, destination.ip, connection.sni, experimental.*
			continue
		}
		rule.When = append(rule.When, &configv1.Condition{Key: c.Key, Values: slices.Clone(c.Values), NotValues: slices.Clone(c.NotValues)})
	}
	return rule, unenforced, nil
}

// saPrincipal turns Istio's "namespace/serviceaccount" into a principal.
func saPrincipal(sa, td string) (string, error) {
	ns, name, ok := strings.Cut(sa, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("%q is not <namespace>/<serviceaccount>", sa)
	}
	return td + "/ns/" + ns + "/sa/" + name, nil
}

// ---- PeerAuthentication ----

// ConvertIstioPeerAuthentication maps Istio's PeerAuthentication to the workload mode it sets
// and, when it has portLevelMtls, to a DENY Authorization that refuses plaintext on the ports
// that are STRICT. Such a PeerAuthentication makes its workloads PERMISSIVE (so plaintext
// reaches the policy) and the ports' modes are enforced by that policy; an unset workload-level
// mode counts as STRICT there (fail closed). DISABLE is PERMISSIVE: between ztunnels traffic
// is always mutual TLS, and plaintext from outside the mesh is accepted.
func ConvertIstioPeerAuthentication(pa *istioapi.PeerAuthentication) (PeerAuth, *configv1.Authorization, error) {
	bad := func(field, format string, args ...any) error {
		return objErr(KindIstioPeerAuthentication, pa.Namespace, pa.Name, field, format, args...)
	}
	mode := func(field, m string) (configv1.PeerAuthenticationMode, error) {
		switch m {
		case "", "UNSET":
			return configv1.PeerAuthenticationMode_UNSET, nil
		case "STRICT":
			return configv1.PeerAuthenticationMode_STRICT, nil
		case "PERMISSIVE", "DISABLE":
			return configv1.PeerAuthenticationMode_PERMISSIVE, nil
		}
		return 0, bad(field, "%q is not UNSET, STRICT, PERMISSIVE or DISABLE", m)
	}
	out := PeerAuth{Namespace: pa.Namespace, Name: istioPrefix + pa.Name, Created: pa.CreationTimestamp.Time}
	if pa.Spec.Selector != nil {
		out.Selector = maps2(pa.Spec.Selector.MatchLabels)
	}
	var err error
	if pa.Spec.MTLS != nil {
		if out.Mode, err = mode("spec.mtls.mode", pa.Spec.MTLS.Mode); err != nil {
			return PeerAuth{}, nil, err
		}
	}
	if len(pa.Spec.PortLevelMTLS) == 0 {
		return out, nil, nil
	}
	if len(out.Selector) == 0 {
		return PeerAuth{}, nil, bad("spec.portLevelMtls", "needs a selector (as in Istio)")
	}
	var strict, relaxed []uint32
	for _, k := range slices.Sorted(maps.Keys(pa.Spec.PortLevelMTLS)) {
		f := "spec.portLevelMtls[" + k + "]"
		n, err := strconv.ParseUint(k, 10, 16)
		if err != nil || n == 0 {
			return PeerAuth{}, nil, bad(f, "%q is not a port", k)
		}
		m, err := mode(f+".mode", pa.Spec.PortLevelMTLS[k].Mode)
		if err != nil {
			return PeerAuth{}, nil, err
		}
		switch m {
		case configv1.PeerAuthenticationMode_STRICT:
			strict = append(strict, uint32(n))
		case configv1.PeerAuthenticationMode_PERMISSIVE:
			relaxed = append(relaxed, uint32(n))
		}
	}
	plaintext := []*configv1.Source{{NotPrincipals: []string{"*"}}}
	az := &configv1.Authorization{
		Name: istioPAPrefix + pa.Name, Namespace: pa.Namespace, Scope: configv1.Authorization_WORKLOAD_SELECTOR,
		Selector: out.Selector, Action: configv1.Authorization_DENY,
	}
	if out.Mode == configv1.PeerAuthenticationMode_PERMISSIVE {
		if len(strict) > 0 {
			az.Rules = []*configv1.Rule{{From: plaintext, To: []*configv1.Operation{{Ports: strict}}}}
		}
	} else { // STRICT or unset: plaintext refused except on the relaxed ports
		az.Rules = []*configv1.Rule{{From: plaintext, To: []*configv1.Operation{{NotPorts: relaxed}}}}
	}
	out.Mode = configv1.PeerAuthenticationMode_PERMISSIVE
	return out, az, nil
}

// ---- VirtualService and DestinationRule ----

// IstioRoute is one VirtualService http rule (with one of its matches) for one host, before
// its subsets are resolved against the DestinationRules.
type IstioRoute struct {
	Route *configv1.Route
	// subsets[i] is the subset name of Route.Backends[i] ("" for none) and subsetField the
	// field that names it; mirrorSubsets and mirrorFields the same for Route.Mirrors.
	subsets, subsetField       []string
	mirrorSubsets, mirrorField []string
}

// IstioVS is a validated VirtualService: the routes it gives each Service host.
type IstioVS struct {
	Namespace, Name string
	Created         time.Time
	// Parents maps a parent Service's resource name ("<ns>/<hostname>") to its routes, in
	// the VirtualService's order; TCP to its TCP routes.
	Parents map[string][]IstioRoute
	TCP     map[string][]IstioRoute
}

// ConvertVirtualService validates a VirtualService as Istio reads it for the mesh (the
// waypoint of its hosts) and compiles its http routes. A VirtualService bound only to
// gateways other than "mesh" gives no routes. What the waypoint does not implement is
// refused with an error naming the field.
func ConvertVirtualService(vs *istioapi.VirtualService, opts Options) (*IstioVS, error) {
	bad := func(field, format string, args ...any) error {
		return objErr(KindIstioVirtualService, vs.Namespace, vs.Name, field, format, args...)
	}
	out := &IstioVS{Namespace: vs.Namespace, Name: vs.Name, Created: vs.CreationTimestamp.Time, Parents: map[string][]IstioRoute{}, TCP: map[string][]IstioRoute{}}
	sp := vs.Spec
	if len(sp.Hosts) == 0 {
		return nil, bad("spec.hosts", "empty")
	}
	var parents []string
	for i, h := range sp.Hosts {
		if h == "" || strings.Contains(h, "*") {
			return nil, bad(fmt.Sprintf("spec.hosts[%d]", i), "%q: wildcard hosts are not supported", h)
		}
		if p, ok := serviceOfHost(ResolveHost(h, vs.Namespace, opts.Domain), opts.Domain); ok {
			parents = append(parents, p)
		}
	}
	if len(sp.Gateways) > 0 && !slices.Contains(sp.Gateways, "mesh") {
		return out, nil // ingress only: nothing for the mesh
	}
	var routes []IstioRoute
	for i, h := range sp.HTTP {
		rs, err := istioHTTPRoute(h, i, vs, opts)
		if err != nil {
			e := err.(*fieldErr)
			return nil, bad(e.field, "%w", e.err)
		}
		routes = append(routes, rs...)
	}
	var tcp []IstioRoute
	// TLS routes first: they are the more specific (a server name), as in Istio.
	for i, tr := range sp.TLS {
		var l4 []istioapi.L4MatchAttributes
		var sni [][]string
		for k, m := range tr.Match {
			mf := fmt.Sprintf("spec.tls[%d].match[%d]", i, k)
			if len(m.SniHosts) == 0 {
				return nil, bad(mf+".sniHosts", "empty")
			}
			for j, h := range m.SniHosts {
				if h == "" || (strings.Contains(h, "*") && (h != "*" && !strings.HasPrefix(h, "*.") || strings.Count(h, "*") > 1)) {
					return nil, bad(fmt.Sprintf("%s.sniHosts[%d]", mf, j), "%q is not a server name or *.domain", h)
				}
			}
			l4 = append(l4, istioapi.L4MatchAttributes{DestinationSubnets: m.DestinationSubnets, Port: m.Port, SourceLabels: m.SourceLabels,
				Gateways: m.Gateways, SourceNamespace: m.SourceNamespace})
			sni = append(sni, m.SniHosts)
		}
		if len(l4) == 0 {
			return nil, bad(fmt.Sprintf("spec.tls[%d].match", i), "empty: a TLS route needs sniHosts")
		}
		for k := range l4 {
			rs, err := istioTCPRoute(istioapi.TCPRoute{Match: l4[k : k+1], Route: tr.Route}, i, vs, opts)
			if err != nil {
				e := err.(*fieldErr)
				return nil, bad(strings.Replace(strings.Replace(e.field, "spec.tcp[", "spec.tls[", 1), ".match[0]", fmt.Sprintf(".match[%d]", k), 1), "%w", e.err)
			}
			for _, r := range rs {
				r.Route.Name = fmt.Sprintf("%s/%s/tls/%d", vs.Namespace, vs.Name, i)
				for _, h := range sni[k] {
					if h == "*" {
						r.Route.SniHosts = nil // any name: no limit
						break
					}
					r.Route.SniHosts = append(r.Route.SniHosts, h)
				}
				tcp = append(tcp, r)
			}
		}
	}
	for i, tr := range sp.TCP {
		rs, err := istioTCPRoute(tr, i, vs, opts)
		if err != nil {
			e := err.(*fieldErr)
			return nil, bad(e.field, "%w", e.err)
		}
		tcp = append(tcp, rs...)
	}
	for _, p := range parents {
		out.Parents[p] = routes
		out.TCP[p] = tcp
	}
	return out, nil
}

// istioTCPRoute compiles one tcp rule: one route per matched port (Istio's L4 match).
func istioTCPRoute(tr istioapi.TCPRoute, i int, vs *istioapi.VirtualService, opts Options) ([]IstioRoute, error) {
	base := fmt.Sprintf("spec.tcp[%d]", i)
	if len(tr.Route) == 0 {
		return nil, &fieldErr{base + ".route", fmt.Errorf("empty")}
	}
	r := &configv1.Route{Name: fmt.Sprintf("%s/%s/tcp/%d", vs.Namespace, vs.Name, i)}
	var subsets, fields []string
	sum := int32(0)
	for j, d := range tr.Route {
		f := fmt.Sprintf("%s.route[%d]", base, j)
		if d.Destination.Host == "" || strings.Contains(d.Destination.Host, "*") {
			return nil, &fieldErr{f + ".destination.host", fmt.Errorf("%q is not a Service host", d.Destination.Host)}
		}
		if d.Weight < 0 || d.Weight > 100 {
			return nil, &fieldErr{f + ".weight", fmt.Errorf("%d is not in [0, 100]", d.Weight)}
		}
		sum += d.Weight
		be := &configv1.Backend{Hostname: ResolveHost(d.Destination.Host, vs.Namespace, opts.Domain), Weight: uint32(d.Weight)}
		if d.Destination.Port != nil {
			if d.Destination.Port.Number < 1 || d.Destination.Port.Number > 65535 {
				return nil, &fieldErr{f + ".destination.port.number", fmt.Errorf("%d out of range", d.Destination.Port.Number)}
			}
			be.Port = d.Destination.Port.Number
		}
		r.Backends = append(r.Backends, be)
		subsets, fields = append(subsets, d.Destination.Subset), append(fields, f+".destination.subset")
	}
	switch {
	case len(tr.Route) == 1 && sum == 0:
		r.Backends[0].Weight = 100
	case sum != 100:
		return nil, &fieldErr{base + ".route", fmt.Errorf("weights add up to %d, not 100", sum)}
	}
	matches := tr.Match
	if len(matches) == 0 {
		matches = []istioapi.L4MatchAttributes{{}}
	}
	var out []IstioRoute
	for k, m := range matches {
		mf := fmt.Sprintf("%s.match[%d]", base, k)
		if len(m.Gateways) > 0 && !slices.Contains(m.Gateways, "mesh") {
			continue
		}
		if err := unsupported(mf, "",
			setField{"destinationSubnets", len(m.DestinationSubnets) > 0}, setField{"sourceSubnet", m.SourceSubnet != ""},
			setField{"sourceLabels", len(m.SourceLabels) > 0}, setField{"sourceNamespace", m.SourceNamespace != ""}); err != nil {
			return nil, err
		}
		if m.Port > 65535 {
			return nil, &fieldErr{mf + ".port", fmt.Errorf("%d out of range", m.Port)}
		}
		rr := proto.Clone(r).(*configv1.Route)
		if m.Port != 0 {
			rr.Ports = []uint32{m.Port}
		}
		out = append(out, IstioRoute{Route: rr, subsets: subsets, subsetField: fields})
	}
	return out, nil
}

func istioHTTPRoute(h istioapi.HTTPRoute, i int, vs *istioapi.VirtualService, opts Options) ([]IstioRoute, error) {
	base := fmt.Sprintf("spec.http[%d]", i)
	if err := unsupported(base, "", setField{"delegate", len(h.Delegate) > 0}); err != nil {
		return nil, err
	}
	name := h.Name
	if name == "" {
		name = fmt.Sprintf("%s/%s/%d", vs.Namespace, vs.Name, i)
	}
	r := &configv1.Route{Name: name}
	var ir IstioRoute
	if err := istioL7(h, base, vs.Namespace, opts, r, &ir); err != nil {
		return nil, err
	}
	if len(h.Route) == 0 && r.Redirect == nil && r.DirectResponse == nil {
		return nil, &fieldErr{base + ".route", fmt.Errorf("empty: a rule needs a route, a redirect or a directResponse")}
	}
	var subsets, subsetFields []string
	sum := int32(0)
	for j, d := range h.Route {
		f := fmt.Sprintf("%s.route[%d]", base, j)
		var dh configv1.Route // the destination's own header edits, applied after the rule's
		if d.Headers != nil {
			if err := mergeHeaders(&dh, d.Headers, f+".headers"); err != nil {
				return nil, err
			}
		}
		if d.Destination.Host == "" {
			return nil, &fieldErr{f + ".destination.host", fmt.Errorf("empty")}
		}
		if strings.Contains(d.Destination.Host, "*") {
			return nil, &fieldErr{f + ".destination.host", fmt.Errorf("%q: wildcards are not supported", d.Destination.Host)}
		}
		if d.Weight < 0 || d.Weight > 100 {
			return nil, &fieldErr{f + ".weight", fmt.Errorf("%d is not in [0, 100]", d.Weight)}
		}
		sum += d.Weight
		be := &configv1.Backend{Hostname: ResolveHost(d.Destination.Host, vs.Namespace, opts.Domain), Weight: uint32(d.Weight),
			RequestHeaders: dh.RequestHeaders, ResponseHeaders: dh.ResponseHeaders}
		if d.Destination.Port != nil {
			if d.Destination.Port.Number < 1 || d.Destination.Port.Number > 65535 {
				return nil, &fieldErr{f + ".destination.port.number", fmt.Errorf("%d out of range", d.Destination.Port.Number)}
			}
			be.Port = d.Destination.Port.Number
		}
		r.Backends = append(r.Backends, be)
		subsets = append(subsets, d.Destination.Subset)
		subsetFields = append(subsetFields, f+".destination.subset")
	}
	switch {
	case len(h.Route) == 0: // a redirect or a direct response
	case len(h.Route) == 1 && sum == 0:
		r.Backends[0].Weight = 100 // one destination takes everything
	case sum != 100:
		return nil, &fieldErr{base + ".route", fmt.Errorf("weights add up to %d, not 100", sum)}
	}
	if h.Timeout != "" {
		d, err := istioDuration(h.Timeout)
		if err != nil {
			return nil, &fieldErr{base + ".timeout", err}
		}
		if d > 0 {
			r.Timeouts = &configv1.Timeouts{Request: durationpb.New(d)}
		}
	}
	if rt := h.Retries; rt != nil {
		retry, perTry, err := istioRetry(rt, base+".retries")
		if err != nil {
			return nil, err
		}
		r.Retry = retry
		if perTry > 0 {
			if r.Timeouts == nil {
				r.Timeouts = &configv1.Timeouts{}
			}
			if r.Timeouts.Request != nil && perTry > r.Timeouts.Request.AsDuration() {
				return nil, &fieldErr{base + ".retries.perTryTimeout", fmt.Errorf("%s exceeds timeout %s", perTry, r.Timeouts.Request.AsDuration())}
			}
			r.Timeouts.BackendRequest = durationpb.New(perTry)
		}
	}
	if ft := h.Fault; ft != nil {
		f, err := istioFault(ft, base+".fault")
		if err != nil {
			return nil, err
		}
		r.Fault = f
	}
	matches := h.Match
	if len(matches) == 0 {
		matches = []istioapi.HTTPMatchRequest{{}}
	}
	var out []IstioRoute
	for k, m := range matches {
		if len(m.Gateways) > 0 && !slices.Contains(m.Gateways, "mesh") {
			continue // this match is for ingress gateways only
		}
		mr, port, err := istioMatch(m, fmt.Sprintf("%s.match[%d]", base, k))
		if err != nil {
			return nil, err
		}
		rr := proto.Clone(r).(*configv1.Route)
		rr.Matches = []*configv1.RouteMatch{mr}
		if port != 0 {
			rr.Ports = []uint32{port}
		}
		out = append(out, IstioRoute{Route: rr, subsets: subsets, subsetField: subsetFields, mirrorSubsets: ir.mirrorSubsets, mirrorField: ir.mirrorField})
	}
	return out, nil
}

// istioHeaderMatch compiles a header's StringMatch: exact, prefix, regex (RE2, the whole
// value, as Envoy's safe_regex), or (empty) presence.
func istioHeaderMatch(name string, h istioapi.StringMatch, invert bool, field string) (*configv1.HeaderMatch, error) {
	if (h.Exact != "" && h.Prefix != "") || (h.Regex != "" && h.Exact+h.Prefix != "") {
		return nil, &fieldErr{field, fmt.Errorf("exact, prefix and regex are mutually exclusive")}
	}
	if h.Regex != "" {
		if err := checkRegex(h.Regex, field+".regex"); err != nil {
			return nil, err
		}
	}
	return &configv1.HeaderMatch{Name: name, Value: h.Exact, Prefix: h.Prefix, Regex: h.Regex, Invert: invert,
		Present: h.Exact == "" && h.Prefix == "" && h.Regex == ""}, nil
}

// istioMatch compiles one HTTPMatchRequest (its port apart).
func istioMatch(m istioapi.HTTPMatchRequest, base string) (*configv1.RouteMatch, uint32, error) {
	if m.Scheme != nil {
		return nil, 0, &fieldErr{base + ".scheme", fmt.Errorf("not supported")}
	}
	out := &configv1.RouteMatch{SourceNamespace: m.SourceNamespace, SourceLabels: maps2(m.SourceLabels), PathIgnoreCase: m.IgnoreURICase}
	for _, name := range slices.Sorted(maps.Keys(m.WithoutHeaders)) {
		f := base + ".withoutHeaders[" + name + "]"
		if name == "" {
			return nil, 0, &fieldErr{f, fmt.Errorf("empty header name")}
		}
		hm, err := istioHeaderMatch(name, m.WithoutHeaders[name], true, f)
		if err != nil {
			return nil, 0, err
		}
		out.Headers = append(out.Headers, hm)
	}
	if a := m.Authority; a != nil {
		hm, err := istioHeaderMatch("", *a, false, base+".authority")
		if err != nil {
			return nil, 0, err
		}
		out.Authority = hm
	}
	for _, name := range slices.Sorted(maps.Keys(m.QueryParams)) {
		q := m.QueryParams[name]
		f := base + ".queryParams[" + name + "]"
		switch {
		case q.Prefix != "":
			return nil, 0, &fieldErr{f, fmt.Errorf("only exact and regex are supported")}
		case q.Regex != "" && q.Exact != "":
			return nil, 0, &fieldErr{f, fmt.Errorf("exact and regex are mutually exclusive")}
		case q.Regex != "":
			if err := checkRegex(q.Regex, f+".regex"); err != nil {
				return nil, 0, err
			}
		}
		out.QueryParams = append(out.QueryParams, &configv1.QueryMatch{Name: name, Value: q.Exact, Regex: q.Regex})
	}
	if u := m.URI; u != nil {
		switch {
		case (u.Exact != "" && u.Prefix != "") || (u.Regex != "" && u.Exact+u.Prefix != ""):
			return nil, 0, &fieldErr{base + ".uri", fmt.Errorf("exact, prefix and regex are mutually exclusive")}
		case u.Regex != "":
			if err := checkRegex(u.Regex, base+".uri.regex"); err != nil {
				return nil, 0, err
			}
			re := u.Regex
			if m.IgnoreURICase {
				re = "(?i)" + re // the waypoint lowers the path it matches
			}
			out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: re}}
		case u.Exact != "":
			if !strings.HasPrefix(u.Exact, "/") {
				return nil, 0, &fieldErr{base + ".uri.exact", fmt.Errorf("%q does not start with /", u.Exact)}
			}
			out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: u.Exact}}
		case u.Prefix != "":
			if !strings.HasPrefix(u.Prefix, "/") {
				return nil, 0, &fieldErr{base + ".uri.prefix", fmt.Errorf("%q does not start with /", u.Prefix)}
			}
			out.Path = &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: u.Prefix}}
		}
	}
	if mm := m.Method; mm != nil {
		if mm.Prefix != "" || mm.Regex != "" {
			return nil, 0, &fieldErr{base + ".method", fmt.Errorf("only exact is supported")}
		}
		out.Method = mm.Exact
	}
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		f := base + ".headers[" + name + "]"
		if name == "" {
			return nil, 0, &fieldErr{f, fmt.Errorf("empty header name")}
		}
		hm, err := istioHeaderMatch(name, m.Headers[name], false, f)
		if err != nil {
			return nil, 0, err
		}
		out.Headers = append(out.Headers, hm)
	}
	if m.Port > 65535 {
		return nil, 0, &fieldErr{base + ".port", fmt.Errorf("%d out of range", m.Port)}
	}
	return out, m.Port, nil
}

// istioRetryOn maps retryOn conditions to the status codes the waypoint retries. A connect
// failure is always retried (nothing was sent); a reset is retried whenever a retry policy is
// set.
var istioRetryOn = map[string][]uint32{
	"5xx":                    {500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 510, 511},
	"gateway-error":          {502, 503, 504},
	"connect-failure":        nil,
	"reset":                  nil,
	"retriable-status-codes": nil, // the codes are the numbers listed beside it
	"refused-stream":         nil, // an HTTP/2 REFUSED_STREAM is a reset
	"retriable-4xx":          {409},
}

// grpcCodes are gRPC's status names.
var grpcCodes = map[string]uint32{
	"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
	"ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
	"OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

// istioRetryOnGRPC maps retryOn's gRPC conditions to the status codes retried.
var istioRetryOnGRPC = map[string]uint32{
	"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14,
}

func istioRetry(rt *istioapi.HTTPRetry, base string) (*configv1.Retry, time.Duration, error) {
	if rt.Attempts < 0 || rt.Attempts > MaxRetryAttempts {
		return nil, 0, &fieldErr{base + ".attempts", fmt.Errorf("%d is not in [0, %d]", rt.Attempts, MaxRetryAttempts)}
	}
	if rt.RetryRemoteLocalities != nil && *rt.RetryRemoteLocalities {
		return nil, 0, &fieldErr{base + ".retryRemoteLocalities", fmt.Errorf("not supported")}
	}
	out := &configv1.Retry{Attempts: uint32(rt.Attempts)}
	if rt.Attempts == 0 && rt.RetryOn == "" {
		return out, 0, nil
	}
	on := rt.RetryOn
	if on == "" {
		on = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes" // Istio's default
	}
	seen := map[uint32]bool{}
	var reset, connect bool
	add := func(c uint32) {
		if !seen[c] {
			seen[c] = true
			out.Codes = append(out.Codes, c)
		}
	}
	for _, c := range strings.Split(on, ",") {
		c = strings.TrimSpace(c)
		switch c {
		case "5xx", "gateway-error", "reset", "refused-stream":
			reset, connect = true, true // Envoy counts resets and connect failures among these
		case "connect-failure":
			connect = true
		}
		if g, ok := istioRetryOnGRPC[c]; ok {
			if !slices.Contains(out.GrpcCodes, g) {
				out.GrpcCodes = append(out.GrpcCodes, g)
			}
			continue
		}
		if codes, ok := istioRetryOn[c]; ok {
			for _, x := range codes {
				add(x)
			}
			continue
		}
		if n, err := strconv.Atoi(c); err == nil {
			if n < 400 || n > 599 {
				return nil, 0, &fieldErr{base + ".retryOn", fmt.Errorf("status %d is not in [400, 599]", n)}
			}
			add(uint32(n))
			continue
		}
		return nil, 0, &fieldErr{base + ".retryOn", fmt.Errorf("%q is not supported (5xx, gateway-error, reset, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, a status code, or the gRPC cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)", c)}
	}
	slices.Sort(out.Codes)
	slices.Sort(out.GrpcCodes)
	// Connect failures are always retried under a retry policy (nothing was sent); resets
	// only when a condition asks for them.
	_ = connect
	out.On = []string{"connect-failure"}
	if reset {
		out.On = []string{"connect-failure", "reset"}
	}
	var perTry time.Duration
	if rt.PerTryTimeout != "" {
		d, err := istioDuration(rt.PerTryTimeout)
		if err != nil {
			return nil, 0, &fieldErr{base + ".perTryTimeout", err}
		}
		perTry = d
	}
	if rt.Backoff != "" {
		d, err := istioDuration(rt.Backoff)
		if err != nil || d > time.Minute {
			if err == nil {
				err = fmt.Errorf("%s exceeds 1m", d)
			}
			return nil, 0, &fieldErr{base + ".backoff", err}
		}
		if d > 0 {
			out.Backoff = durationpb.New(d)
		}
	}
	return out, perTry, nil
}

func istioFault(ft *istioapi.HTTPFaultInjection, base string) (*configv1.Fault, error) {
	out := &configv1.Fault{}
	pct := func(field string, p *istioapi.Percent, legacy int32) (float64, error) {
		v := float64(legacy)
		if p != nil {
			v = p.Value
		} else if legacy == 0 {
			v = 100 // Istio: unset means every request
		}
		if v < 0 || v > 100 || v != v {
			return 0, &fieldErr{field, fmt.Errorf("%v is not in [0, 100]", v)}
		}
		return v, nil
	}
	if d := ft.Delay; d != nil {
		if d.ExponentialDelay != "" {
			return nil, &fieldErr{base + ".delay.exponentialDelay", fmt.Errorf("not supported")}
		}
		dd, err := istioDuration(d.FixedDelay)
		if err != nil || dd <= 0 || dd > time.Hour {
			if err == nil {
				err = fmt.Errorf("%q is not a duration in (0, 1h]", d.FixedDelay)
			}
			return nil, &fieldErr{base + ".delay.fixedDelay", err}
		}
		p, err := pct(base+".delay.percentage.value", d.Percentage, d.Percent)
		if err != nil {
			return nil, err
		}
		out.Delay = &configv1.Fault_Delay{Percentage: p, Delay: durationpb.New(dd)}
	}
	if a := ft.Abort; a != nil {
		if a.HTTP2Error != "" {
			return nil, &fieldErr{base + ".abort.http2Error", fmt.Errorf("not supported")}
		}
		p, err := pct(base+".abort.percentage.value", a.Percentage, 0)
		if err != nil {
			return nil, err
		}
		if a.GRPCStatus != "" {
			if a.HTTPStatus != 0 {
				return nil, &fieldErr{base + ".abort", fmt.Errorf("httpStatus and grpcStatus are mutually exclusive")}
			}
			code, ok := grpcCodes[a.GRPCStatus]
			if !ok {
				return nil, &fieldErr{base + ".abort.grpcStatus", fmt.Errorf("%q is not a gRPC status name (UNAVAILABLE, …)", a.GRPCStatus)}
			}
			out.Abort = &configv1.Fault_Abort{Percentage: p, Grpc: true, GrpcStatus: code}
		} else {
			if a.HTTPStatus < 200 || a.HTTPStatus > 599 {
				return nil, &fieldErr{base + ".abort.httpStatus", fmt.Errorf("%d is not in [200, 599]", a.HTTPStatus)}
			}
			out.Abort = &configv1.Fault_Abort{Percentage: p, Status: uint32(a.HTTPStatus)}
		}
	}
	return out, nil
}

// istioDuration parses a protobuf JSON duration ("1.5s") or a Go one ("300ms").
func istioDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %q", s)
	}
	return d, nil
}

// IstioDR is a validated DestinationRule.
type IstioDR struct {
	Namespace, Name string
	Created         time.Time
	// Host is the Service hostname the rule is for.
	Host    string
	Subsets map[string]map[string]string // name → labels
	// Policy is the host's trafficPolicy, SubsetPolicy each subset's merged over it.
	Policy       *configv1.TrafficPolicy
	SubsetPolicy map[string]*configv1.TrafficPolicy
}

// ConvertDestinationRule validates a DestinationRule. Traffic policies the waypoint does not
// implement are refused with an error naming the field.
func ConvertDestinationRule(dr *istioapi.DestinationRule, opts Options) (*IstioDR, error) {
	bad := func(field, format string, args ...any) error {
		return objErr(KindIstioDestinationRule, dr.Namespace, dr.Name, field, format, args...)
	}
	sp := dr.Spec
	if sp.Host == "" {
		return nil, bad("spec.host", "empty")
	}
	if strings.Contains(sp.Host, "*") {
		return nil, bad("spec.host", "%q: wildcard hosts are not supported", sp.Host)
	}
	if sp.WorkloadSelector != nil {
		return nil, bad("spec.workloadSelector", "not supported")
	}
	out := &IstioDR{Namespace: dr.Namespace, Name: dr.Name, Created: dr.CreationTimestamp.Time,
		Host: ResolveHost(sp.Host, dr.Namespace, opts.Domain), Subsets: map[string]map[string]string{},
		SubsetPolicy: map[string]*configv1.TrafficPolicy{}}
	var err error
	if out.Policy, err = istioTrafficPolicy(sp.TrafficPolicy, "spec.trafficPolicy"); err != nil {
		e := err.(*fieldErr)
		return nil, bad(e.field, "%w", e.err)
	}
	for i, s := range sp.Subsets {
		f := fmt.Sprintf("spec.subsets[%d]", i)
		if s.Name == "" {
			return nil, bad(f+".name", "empty")
		}
		if _, dup := out.Subsets[s.Name]; dup {
			return nil, bad(f+".name", "%q is defined twice", s.Name)
		}
		sp, err := istioTrafficPolicy(s.TrafficPolicy, f+".trafficPolicy")
		if err != nil {
			e := err.(*fieldErr)
			return nil, bad(e.field, "%w", e.err)
		}
		out.SubsetPolicy[s.Name] = mergePolicy(out.Policy, sp)
		out.Subsets[s.Name] = maps.Clone(s.Labels)
		if out.Subsets[s.Name] == nil {
			out.Subsets[s.Name] = map[string]string{}
		}
	}
	return out, nil
}

// resolveIstioRoutes gives the routes of the VirtualServices attached to one parent their
// subsets' labels. A subset no DestinationRule of its host defines is an error naming the
// VirtualService and the field.
func resolveIstioRoutes(vss []*IstioVS, parent string, drs map[key]*IstioDR, tcp bool) ([]*configv1.Route, error) {
	slices.SortStableFunc(vss, func(a, b *IstioVS) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	var out []*configv1.Route
	for _, vs := range vss {
		irs := vs.Parents[parent]
		if tcp {
			irs = vs.TCP[parent]
		}
		for _, ir := range irs {
			r := proto.Clone(ir.Route).(*configv1.Route)
			for i, b := range r.Backends {
				if sub := ir.subsets[i]; sub != "" {
					labels, ok := findSubset(drs, b.Hostname, sub)
					if !ok {
						e := objErr(KindIstioVirtualService, vs.Namespace, vs.Name, ir.subsetField[i],
							"%q is not a subset of any DestinationRule for host %s", sub, b.Hostname)
						e.Unresolved = true
						return nil, e
					}
					b.Subset, b.SubsetName = labels, sub
				}
			}
			for i, m := range r.Mirrors {
				if sub := ir.mirrorSubsets[i]; sub != "" {
					labels, ok := findSubset(drs, m.Hostname, sub)
					if !ok {
						e := objErr(KindIstioVirtualService, vs.Namespace, vs.Name, ir.mirrorField[i],
							"%q is not a subset of any DestinationRule for host %s", sub, m.Hostname)
						e.Unresolved = true
						return nil, e
					}
					m.Subset, m.SubsetName = labels, sub
				}
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// findSubset looks the subset up in the DestinationRules of host: the one in the host's
// namespace first, then the oldest, then by namespace/name.
func findSubset(drs map[key]*IstioDR, host, subset string) (map[string]string, bool) {
	best := findDR(drs, host)
	if best == nil {
		return nil, false
	}
	l, ok := best.Subsets[subset]
	return l, ok
}

// findDR returns the DestinationRule that applies to host, or nil.
func findDR(drs map[key]*IstioDR, host string) *IstioDR {
	hostNS := ""
	if parts := strings.SplitN(host, ".", 3); len(parts) == 3 {
		hostNS = parts[1]
	}
	rank := func(d *IstioDR) int {
		if d.Namespace == hostNS {
			return 0
		}
		return 1
	}
	var best *IstioDR
	for _, dr := range drs {
		if dr.Host != host {
			continue
		}
		if best == nil {
			best = dr
			continue
		}
		c := cmp.Compare(rank(dr), rank(best))
		if c == 0 {
			c = dr.Created.Compare(best.Created)
		}
		if c == 0 {
			c = cmp.Compare(dr.Namespace+"/"+dr.Name, best.Namespace+"/"+best.Name)
		}
		if c < 0 {
			best = dr
		}
	}
	return best
}

// applyDestinationRules gives each backend of rc the traffic policy of its host's
// DestinationRule (its subset's, merged over the host's). rc is not modified: routes that
// change are copies.
func applyDestinationRules(rc *configv1.RouteConfig, drs map[key]*IstioDR) *configv1.RouteConfig {
	if len(drs) == 0 || rc == nil {
		return rc
	}
	out := &configv1.RouteConfig{Hostname: rc.Hostname, Namespace: rc.Namespace, Routes: slices.Clone(rc.Routes), TcpRoutes: slices.Clone(rc.TcpRoutes)}
	for _, routes := range [][]*configv1.Route{out.Routes, out.TcpRoutes} {
		for i, r := range routes {
			var cloned *configv1.Route
			for j, b := range r.Backends {
				dr := findDR(drs, b.Hostname)
				if dr == nil {
					continue
				}
				pol := dr.Policy
				if b.SubsetName != "" {
					pol = dr.SubsetPolicy[b.SubsetName]
				}
				if pol == nil {
					continue
				}
				if cloned == nil {
					cloned = proto.Clone(r).(*configv1.Route)
					routes[i] = cloned
				}
				cloned.Backends[j].Policy = pol
			}
		}
	}
	return out
}
