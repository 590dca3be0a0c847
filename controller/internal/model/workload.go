package model

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Enrolled reports whether pod is in the mesh: its own dataplane-mode label wins, else its
// Namespace's. ns may be nil (not known yet): then only the pod's label counts.
func Enrolled(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if v, ok := dataplaneModeLabel(pod.Labels); ok {
		return v == ModeAmbient
	}
	if ns == nil {
		return false
	}
	v, _ := dataplaneModeLabel(ns.Labels)
	return v == ModeAmbient
}

// WorkloadUID is the resource name of a pod's Workload, "<cluster>//Pod/<ns>/<name>".
func WorkloadUID(cluster, ns, name string) string { return cluster + "//Pod/" + ns + "/" + name }

// PeerAuth is a validated PeerAuthentication.
type PeerAuth struct {
	Namespace, Name string
	Selector        map[string]string
	Mode            configv1.PeerAuthenticationMode
	Created         time.Time
}

// WorkloadInputs are the other objects a pod's Workload depends on.
type WorkloadInputs struct {
	Options Options // with defaults applied
	// Namespace and ServiceAccount of the pod; nil when unknown.
	Namespace      *corev1.Namespace
	ServiceAccount *corev1.ServiceAccount
	// Services are the Services of the pod's namespace (any order).
	Services []*corev1.Service
	// Waypoints of the pod's namespace by name.
	Waypoints map[string]*configv1.Waypoint
	// Policies are the Authorizations of the pod's namespace and of the root namespace.
	Policies []*configv1.Authorization
	// PeerAuths of the pod's namespace and of the root namespace.
	PeerAuths []PeerAuth
	// H3Nodes are the nodes whose ztunnel serves HBONE over HTTP/3 (tunnel.go).
	H3Nodes map[string]bool

	selectorIndex selectorIndex // Index's shortcut to Services
}

// BuildWorkload maps a pod to its Workload. It returns nil, nil for a pod that is not
// Running or has no IP yet.
func BuildWorkload(pod *corev1.Pod, in WorkloadInputs) (*configv1.Workload, error) {
	const kind = "Pod"
	if pod.Status.Phase != corev1.PodRunning || (len(pod.Status.PodIPs) == 0 && pod.Status.PodIP == "") || pod.DeletionTimestamp != nil {
		return nil, nil
	}
	o := in.Options
	w := &configv1.Workload{
		Uid:            WorkloadUID(o.Cluster, pod.Namespace, pod.Name),
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Node:           pod.Spec.NodeName,
		ServiceAccount: cmp.Or(pod.Spec.ServiceAccountName, "default"),
		TrustDomain:    o.TrustDomain,
		WorkloadName:   workloadName(pod),
		Labels:         maps2(pod.Labels),
	}
	ips := pod.Status.PodIPs
	if len(ips) == 0 {
		ips = []corev1.PodIP{{IP: pod.Status.PodIP}}
	}
	for i, ip := range ips {
		b, err := parseIP(ip.IP)
		if err != nil {
			return nil, objErr(kind, pod.Namespace, pod.Name, fmt.Sprintf("status.podIPs[%d].ip", i), "%w", err)
		}
		w.Addresses = append(w.Addresses, b)
	}
	slices.SortStableFunc(w.Addresses, func(a, b []byte) int { return cmp.Compare(len(a), len(b)) }) // IPv4 first
	w.CanonicalService = firstLabel(pod.Labels, w.WorkloadName, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	w.CanonicalRevision = firstLabel(pod.Labels, "latest", "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	if pod.Spec.HostNetwork {
		w.NetworkMode = configv1.NetworkMode_HOST_NETWORK
	}
	w.TunnelProtocol = TunnelProtocol(Enrolled(in.Namespace, pod) && !pod.Spec.HostNetwork,
		WantsH3(in.Namespace, pod, o.TunnelProtocol), in.H3Nodes[pod.Spec.NodeName])
	if !podReady(pod) {
		w.Status = configv1.WorkloadStatus_UNHEALTHY
	}
	for _, svc := range in.Services {
		if svc.Namespace != pod.Namespace || len(svc.Spec.Selector) == 0 || !matches(svc.Spec.Selector, pod.Labels) {
			continue
		}
		var pl []*configv1.Port
		for _, p := range svc.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue
			}
			tp, ok := targetPort(pod, p)
			if !ok {
				continue // a named port the pod does not have: not an endpoint on that port
			}
			pl = append(pl, &configv1.Port{ServicePort: uint32(p.Port), TargetPort: tp, AppProtocol: appProtocol(p)})
		}
		if len(pl) == 0 {
			continue
		}
		if w.Services == nil {
			w.Services = map[string]*configv1.PortList{}
		}
		w.Services[ServiceName(svc.Name, svc.Namespace, o.Domain)] = &configv1.PortList{Ports: pl}
	}
	if w.TunnelProtocol != configv1.TunnelProtocol_NONE {
		w.Waypoint = workloadWaypoint(pod, in)
	}
	for _, p := range in.Policies {
		if p.Scope == configv1.Authorization_WORKLOAD_SELECTOR && len(p.Selector) > 0 &&
			(p.Namespace == pod.Namespace || p.Namespace == o.RootNamespace) && matches(p.Selector, pod.Labels) {
			w.AuthorizationPolicies = append(w.AuthorizationPolicies, p.Namespace+"/"+p.Name)
		}
	}
	slices.Sort(w.AuthorizationPolicies)
	w.PeerAuthentication = peerAuthFor(pod, in.PeerAuths, o.RootNamespace)
	return w, nil
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func targetPort(pod *corev1.Pod, p corev1.ServicePort) (uint32, bool) {
	switch {
	case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == p.TargetPort.StrVal && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
					return uint32(cp.ContainerPort), true
				}
			}
		}
		return 0, false
	case p.TargetPort.IntValue() > 0:
		return uint32(p.TargetPort.IntValue()), true
	}
	return uint32(p.Port), true
}

// workloadName is the name of the pod's controller as Istio derives it: a ReplicaSet's
// Deployment (the ReplicaSet name without its pod-template-hash), or the owner's name.
func workloadName(pod *corev1.Pod) string {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		if ref.Kind == "ReplicaSet" {
			if h := pod.Labels["pod-template-hash"]; h != "" {
				if n, ok := strings.CutSuffix(ref.Name, "-"+h); ok {
					return n
				}
			}
			if i := strings.LastIndexByte(ref.Name, '-'); i > 0 {
				return ref.Name[:i]
			}
		}
		if ref.Kind == "Job" {
			return ref.Name
		}
		return ref.Name
	}
	return pod.Name
}

func firstLabel(l map[string]string, def string, keys ...string) string {
	for _, k := range keys {
		if v := l[k]; v != "" {
			return v
		}
	}
	return def
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// workloadWaypoint resolves the pod's waypoint: Pod > ServiceAccount > Namespace.
func workloadWaypoint(pod *corev1.Pod, in WorkloadInputs) *configv1.GatewayAddress {
	name, ok := useWaypointLabel(pod.Labels)
	if !ok && in.ServiceAccount != nil {
		name, ok = useWaypointLabel(in.ServiceAccount.Labels)
	}
	if !ok && in.Namespace != nil {
		name, ok = useWaypointLabel(in.Namespace.Labels)
	}
	if !ok || name == "" || name == ModeNone {
		return nil
	}
	if pod.Labels["gateway.networking.k8s.io/gateway-name"] == name {
		return nil // the waypoint's own pods
	}
	return gatewayAddress(name, pod.Namespace, in.Options.TrustDomain, in.Waypoints, configv1.Waypoint_SERVICEACCOUNT)
}

// ServiceWaypoint resolves a Service's waypoint: Service > Namespace.
func ServiceWaypoint(svc *corev1.Service, ns *corev1.Namespace, waypoints map[string]*configv1.Waypoint, trustDomain string) *configv1.GatewayAddress {
	name, ok := useWaypointLabel(svc.Labels)
	if !ok && ns != nil {
		name, ok = useWaypointLabel(ns.Labels)
	}
	if !ok || name == "" || name == ModeNone {
		return nil
	}
	return gatewayAddress(name, svc.Namespace, trustDomain, waypoints, configv1.Waypoint_SERVICE)
}

// gatewayAddress is the binding to waypoint name, or nil when that waypoint does not serve
// want. A waypoint not known yet still binds (with no address), so that traffic fails closed.
func gatewayAddress(name, ns, td string, waypoints map[string]*configv1.Waypoint, want configv1.Waypoint_For) *configv1.GatewayAddress {
	wp := waypoints[name]
	if wp == nil {
		return &configv1.GatewayAddress{Identity: "spiffe://" + td + "/ns/" + ns + "/sa/" + name}
	}
	if wp.For != want && wp.For != configv1.Waypoint_NAMESPACE {
		return nil
	}
	ga := &configv1.GatewayAddress{HbonePort: wp.HbonePort, Identity: wp.Identity, TunnelProtocol: wp.TunnelProtocol}
	if wp.Address != nil {
		ga.Address = &configv1.NetworkAddress{Network: wp.Address.Network, Address: slices.Clone(wp.Address.Address)}
	}
	return ga
}

// peerAuthFor: a selector PeerAuthentication of the pod's namespace, then the namespace's,
// then the root namespace's; the oldest wins a tie.
func peerAuthFor(pod *corev1.Pod, pas []PeerAuth, root string) configv1.PeerAuthenticationMode {
	best, bestRank := (*PeerAuth)(nil), 0
	for i := range pas {
		p := &pas[i]
		rank := 0
		switch {
		case p.Namespace == pod.Namespace && len(p.Selector) > 0 && matches(p.Selector, pod.Labels):
			rank = 3
		case p.Namespace == pod.Namespace && len(p.Selector) == 0:
			rank = 2
		case p.Namespace == root && len(p.Selector) == 0:
			rank = 1
		}
		if rank == 0 || p.Mode == configv1.PeerAuthenticationMode_UNSET {
			continue
		}
		if rank > bestRank || (rank == bestRank && (p.Created.Before(best.Created) || (p.Created.Equal(best.Created) && p.Name < best.Name))) {
			best, bestRank = p, rank
		}
	}
	if best == nil {
		return configv1.PeerAuthenticationMode_UNSET
	}
	return best.Mode
}
