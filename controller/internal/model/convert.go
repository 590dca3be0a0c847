package model

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
)

// Names of labels, values and defaults the model reads.
const (
	LabelDataplaneMode = "ambit.dev/dataplane-mode"
	LabelUseWaypoint   = "ambit.dev/use-waypoint"
	LabelWaypointFor   = "ambit.dev/waypoint-for"
	ModeAmbient        = "ambient"
	ModeNone           = "none"
	WaypointClass      = "ambit-waypoint"
	DefaultTrustDomain = "cluster.local"
	DefaultDomain      = "cluster.local"
	DefaultRootNS      = "ambit-system"
	DefaultCluster     = "Kubernetes"
)

// Options are mesh-wide settings the conversions need. The zero value means the defaults.
type Options struct {
	// TrustDomain of workload identities; default cluster.local.
	TrustDomain string
	// Domain is the cluster DNS suffix of Service hostnames; default cluster.local.
	Domain string
	// RootNamespace holds mesh-wide policies; default ambit-system.
	RootNamespace string
	// Cluster is the cluster ID in workload uids; default Kubernetes (as Istio).
	Cluster string
	// TunnelProtocol is the mesh-wide default of the ambit.dev/tunnel-protocol label
	// (tunnel.go): "" or TunnelModeHBONE, or TunnelModeHBONEH3.
	TunnelProtocol string
}

// WithDefaults returns a copy of o with the empty fields filled.
func (o Options) WithDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.Domain == "" {
		o.Domain = DefaultDomain
	}
	if o.RootNamespace == "" {
		o.RootNamespace = DefaultRootNS
	}
	if o.Cluster == "" {
		o.Cluster = DefaultCluster
	}
	return o
}

// Hostname is the fully qualified name of Service name in namespace ns.
func Hostname(name, ns, domain string) string { return name + "." + ns + ".svc." + domain }

// ServiceName is the resource name of a Service (and its RouteConfig): "<ns>/<hostname>".
func ServiceName(name, ns, domain string) string { return ns + "/" + Hostname(name, ns, domain) }

// parseIP returns the 4- or 16-byte form of s.
func parseIP(s string) ([]byte, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil, err
	}
	a = a.Unmap()
	if a.Zone() != "" {
		return nil, fmt.Errorf("address %q has a zone", s)
	}
	return a.AsSlice(), nil
}

// ConvertService maps a Service to its resource, without the waypoint binding (which
// depends on other objects; see ServiceWaypoint). Headless Services have no addresses.
func ConvertService(svc *corev1.Service, domain string) (*configv1.Service, error) {
	const kind = "Service"
	out := &configv1.Service{
		Name:      svc.Name,
		Namespace: svc.Namespace,
		Hostname:  Hostname(svc.Name, svc.Namespace, domain),
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for i, ip := range ips {
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		b, err := parseIP(ip)
		if err != nil {
			return nil, objErr(kind, svc.Namespace, svc.Name, fmt.Sprintf("spec.clusterIPs[%d]", i), "%w", err)
		}
		out.Addresses = append(out.Addresses, &configv1.NetworkAddress{Address: b})
	}
	for i, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // ambit carries TCP only
		}
		if p.Port <= 0 || p.Port > 65535 {
			return nil, objErr(kind, svc.Namespace, svc.Name, fmt.Sprintf("spec.ports[%d].port", i), "port %d out of range", p.Port)
		}
		port := &configv1.Port{ServicePort: uint32(p.Port), AppProtocol: appProtocol(p)}
		if p.TargetPort.IntValue() > 0 {
			port.TargetPort = uint32(p.TargetPort.IntValue())
		}
		out.Ports = append(out.Ports, port)
	}
	return out, nil
}

// appProtocol follows the design: appProtocol, then the port name's prefix; no sniffing.
func appProtocol(p corev1.ServicePort) configv1.AppProtocol {
	v := p.Name
	if p.AppProtocol != nil {
		v = *p.AppProtocol
	}
	v = strings.ToLower(v)
	switch {
	case v == "http" || strings.HasPrefix(v, "http-") || v == "kubernetes.io/http":
		return configv1.AppProtocol_HTTP
	case v == "http2" || strings.HasPrefix(v, "http2-") || v == "kubernetes.io/h2c":
		return configv1.AppProtocol_HTTP2
	case v == "grpc" || strings.HasPrefix(v, "grpc-"):
		return configv1.AppProtocol_GRPC
	}
	return configv1.AppProtocol_TCP
}

// ConvertGateway maps an ambit-waypoint Gateway to a Waypoint. ok is false for a Gateway
// of another class, which is not an error.
func ConvertGateway(gw *gatewayv1.Gateway, trustDomain string) (wp *configv1.Waypoint, ok bool, err error) {
	const kind = "Gateway"
	if string(gw.Spec.GatewayClassName) != WaypointClass {
		return nil, false, nil
	}
	out := &configv1.Waypoint{
		Name:      gw.Name,
		Namespace: gw.Namespace,
		Identity:  "spiffe://" + trustDomain + "/ns/" + gw.Namespace + "/sa/" + gw.Name,
	}
	v, _ := label(gw.Labels, LabelWaypointFor, LabelIstioWaypointFor)
	switch v {
	case "", "serviceaccount":
		out.For = configv1.Waypoint_SERVICEACCOUNT
	case "service":
		out.For = configv1.Waypoint_SERVICE
	case "namespace":
		out.For = configv1.Waypoint_NAMESPACE
	default:
		return nil, true, objErr(kind, gw.Namespace, gw.Name, "metadata.labels["+LabelWaypointFor+"]",
			"%q is not serviceaccount, service or namespace", v)
	}
	for _, l := range gw.Spec.Listeners {
		if l.Name == "mesh" && l.Port != 0 && l.Port != 15008 {
			out.HbonePort = uint32(l.Port)
		}
	}
	for i, a := range gw.Status.Addresses {
		if a.Type != nil && *a.Type != gatewayv1.IPAddressType {
			continue
		}
		b, err := parseIP(a.Value)
		if err != nil {
			return nil, true, objErr(kind, gw.Namespace, gw.Name, fmt.Sprintf("status.addresses[%d].value", i), "%w", err)
		}
		out.Address = &configv1.NetworkAddress{Address: b}
		return out, true, nil
	}
	for i, a := range gw.Spec.Addresses {
		if a.Type != nil && *a.Type != gatewayv1.IPAddressType {
			continue
		}
		b, err := parseIP(a.Value)
		if err != nil {
			return nil, true, objErr(kind, gw.Namespace, gw.Name, fmt.Sprintf("spec.addresses[%d].value", i), "%w", err)
		}
		out.Address = &configv1.NetworkAddress{Address: b}
		break
	}
	return out, true, nil
}

// PeerAuthMode validates a PeerAuthentication and returns its mode.
func PeerAuthMode(pa *secv1.PeerAuthentication) (configv1.PeerAuthenticationMode, error) {
	if pa.Spec.MTLS == nil {
		return configv1.PeerAuthenticationMode_UNSET, nil
	}
	switch pa.Spec.MTLS.Mode {
	case "":
		return configv1.PeerAuthenticationMode_UNSET, nil
	case "STRICT":
		return configv1.PeerAuthenticationMode_STRICT, nil
	case "PERMISSIVE":
		return configv1.PeerAuthenticationMode_PERMISSIVE, nil
	}
	return 0, objErr("PeerAuthentication", pa.Namespace, pa.Name, "spec.mtls.mode", "%q is not STRICT or PERMISSIVE", pa.Spec.MTLS.Mode)
}

// ConvertAuthorizationPolicy maps an AuthorizationPolicy to an Authorization. rootNS is the
// mesh root namespace, where a policy with no selector and no targetRefs is GLOBAL.
func ConvertAuthorizationPolicy(p *secv1.AuthorizationPolicy, rootNS string) (*configv1.Authorization, error) {
	const kind = "AuthorizationPolicy"
	bad := func(field, format string, args ...any) error {
		return objErr(kind, p.Namespace, p.Name, field, format, args...)
	}
	out := &configv1.Authorization{Name: p.Name, Namespace: p.Namespace}
	hasSel := p.Spec.Selector != nil && len(p.Spec.Selector.MatchLabels) > 0
	switch {
	case hasSel && len(p.Spec.TargetRefs) > 0:
		return nil, bad("spec.targetRefs", "selector and targetRefs are mutually exclusive")
	case hasSel, len(p.Spec.TargetRefs) > 0:
		out.Scope = configv1.Authorization_WORKLOAD_SELECTOR
	case p.Namespace == rootNS:
		out.Scope = configv1.Authorization_GLOBAL
	default:
		out.Scope = configv1.Authorization_NAMESPACE
	}
	if hasSel {
		out.Selector = maps2(p.Spec.Selector.MatchLabels)
	}
	for i, t := range p.Spec.TargetRefs {
		f := fmt.Sprintf("spec.targetRefs[%d]", i)
		switch {
		case t.Kind == "Gateway" && (t.Group == gatewayv1.GroupName || t.Group == ""):
		case t.Kind == "Service" && (t.Group == "" || t.Group == "core"):
		default:
			return nil, bad(f+".kind", "%s (group %q) is not a Gateway or Service", t.Kind, t.Group)
		}
		if t.Name == "" {
			return nil, bad(f+".name", "empty")
		}
		out.TargetRefs = append(out.TargetRefs, &configv1.TargetRef{Group: t.Group, Kind: t.Kind, Name: t.Name})
	}
	switch p.Spec.Action {
	case "", "ALLOW":
		out.Action = configv1.Authorization_ALLOW
	case "DENY":
		out.Action = configv1.Authorization_DENY
	default:
		return nil, bad("spec.action", "%q is not ALLOW or DENY", p.Spec.Action)
	}
	for i, r := range p.Spec.Rules {
		rule := &configv1.Rule{}
		for j, f := range r.From {
			base := fmt.Sprintf("spec.rules[%d].from[%d].source.", i, j)
			s := &configv1.Source{
				Principals:    slices.Clone(f.Source.Principals),
				NotPrincipals: slices.Clone(f.Source.NotPrincipals),
				Namespaces:    slices.Clone(f.Source.Namespaces),
				NotNamespaces: slices.Clone(f.Source.NotNamespaces),
			}
			var err error
			if s.IpBlocks, err = ipBlocks(f.Source.IPBlocks); err != nil {
				return nil, bad(base+"ipBlocks"+err.(*indexErr).at(), "%w", err.(*indexErr).err)
			}
			if s.NotIpBlocks, err = ipBlocks(f.Source.NotIPBlocks); err != nil {
				return nil, bad(base+"notIpBlocks"+err.(*indexErr).at(), "%w", err.(*indexErr).err)
			}
			rule.From = append(rule.From, s)
		}
		for j, t := range r.To {
			base := fmt.Sprintf("spec.rules[%d].to[%d].operation.", i, j)
			o := &configv1.Operation{
				Methods:    slices.Clone(t.Operation.Methods),
				NotMethods: slices.Clone(t.Operation.NotMethods),
				Paths:      slices.Clone(t.Operation.Paths),
				NotPaths:   slices.Clone(t.Operation.NotPaths),
			}
			var err error
			if o.Ports, err = ports(t.Operation.Ports); err != nil {
				return nil, bad(base+"ports"+err.(*indexErr).at(), "%w", err.(*indexErr).err)
			}
			if o.NotPorts, err = ports(t.Operation.NotPorts); err != nil {
				return nil, bad(base+"notPorts"+err.(*indexErr).at(), "%w", err.(*indexErr).err)
			}
			rule.To = append(rule.To, o)
		}
		out.Rules = append(out.Rules, rule)
	}
	return out, nil
}

type indexErr struct {
	i   int
	err error
}

func (e *indexErr) Error() string { return e.err.Error() }
func (e *indexErr) at() string    { return "[" + strconv.Itoa(e.i) + "]" }

func ipBlocks(in []string) ([]*configv1.IPBlock, error) {
	var out []*configv1.IPBlock
	for i, s := range in {
		var pfx netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			pfx, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err == nil && pfx.Addr().Zone() != "" {
			err = errors.New("zones are not allowed")
		}
		if err != nil {
			return nil, &indexErr{i, fmt.Errorf("invalid address or CIDR %q: %w", s, err)}
		}
		if pfx.Addr().Is4In6() {
			pfx = netip.PrefixFrom(pfx.Addr().Unmap(), max(pfx.Bits()-96, 0))
		}
		out = append(out, &configv1.IPBlock{Address: pfx.Addr().AsSlice(), Length: uint32(pfx.Bits())})
	}
	return out, nil
}

func ports(in []string) ([]uint32, error) {
	var out []uint32
	for i, s := range in {
		n, err := strconv.ParseUint(s, 10, 16)
		if err == nil && n == 0 {
			err = errors.New("port 0")
		}
		if err != nil {
			return nil, &indexErr{i, fmt.Errorf("invalid port %q: %w", s, err)}
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

func maps2(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
