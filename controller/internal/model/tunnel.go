package model

import (
	"fmt"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
)

// LabelTunnelProtocol on a Namespace (or on a Pod, which wins) chooses how other proxies
// tunnel to its workloads: TunnelModeHBONEH3 asks for HBONE over HTTP/3 (UDP 15008),
// TunnelModeHBONE for HTTP/2. Without it, Options.TunnelProtocol (the controller's
// --tunnel-protocol) decides. Asking is not enough: a workload is marked HBONE_H3 only
// when the proxy that terminates its tunnels, its node's ztunnel, reported that it serves
// HTTP/3 (node metadata TUNNEL_PROTOCOLS, see SetNodeTunnelH3). Istio's ztunnels report
// nothing, so their workloads stay HBONE, and peers that cannot do HTTP/3 (Istio's) dial
// HTTP/2 whatever the mark says; ours fall back to HTTP/2 when UDP does not get through.
const (
	LabelTunnelProtocol = "ambit.dev/tunnel-protocol"
	TunnelModeHBONE     = "hbone"
	TunnelModeHBONEH3   = "hbone-h3"
)

// ValidTunnelMode reports an error for a value that is neither TunnelModeHBONE nor
// TunnelModeHBONEH3 ("" is the default, HBONE).
func ValidTunnelMode(v string) error {
	switch v {
	case "", TunnelModeHBONE, TunnelModeHBONEH3:
		return nil
	}
	return fmt.Errorf("tunnel protocol %q is not %q or %q", v, TunnelModeHBONE, TunnelModeHBONEH3)
}

// WantsH3 reports whether the settings ask for HTTP/3 for pod: its own
// ambit.dev/tunnel-protocol label, else its Namespace's (ns may be nil), else meshDefault.
// A label with another value means HTTP/2, so a typo never turns HTTP/3 on.
func WantsH3(ns *corev1.Namespace, pod *corev1.Pod, meshDefault string) bool {
	if v, ok := pod.Labels[LabelTunnelProtocol]; ok {
		return v == TunnelModeHBONEH3
	}
	if ns != nil {
		if v, ok := ns.Labels[LabelTunnelProtocol]; ok {
			return v == TunnelModeHBONEH3
		}
	}
	return meshDefault == TunnelModeHBONEH3
}

// TunnelProtocol is the tunnel protocol of a workload: NONE outside the mesh, HBONE_H3
// when the settings ask for it and the proxy that terminates its tunnels serves it, else
// HBONE.
func TunnelProtocol(enrolled, wantH3, servesH3 bool) configv1.TunnelProtocol {
	switch {
	case !enrolled:
		return configv1.TunnelProtocol_NONE
	case wantH3 && servesH3:
		return configv1.TunnelProtocol_HBONE_H3
	}
	return configv1.TunnelProtocol_HBONE
}

// SetNodeTunnelH3 records whether the ztunnel of node serves HBONE over HTTP/3, as it
// reported when it connected, and reports whether that changed; the node's workloads are
// recomputed at the next Commit. The last report stands while the ztunnel is away (a
// controller restart or a network blip must not flip every tunnel of the node), and a
// newer ztunnel's report replaces an older one's when they hand over.
func (x *Index) SetNodeTunnelH3(node string, h3 bool) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.h3Nodes[node] == h3 {
		return false
	}
	if h3 {
		x.h3Nodes[node] = true
	} else {
		delete(x.h3Nodes, node)
	}
	for ns, pods := range x.pods {
		for name, pod := range pods {
			if pod.Spec.NodeName == node {
				x.dirtyPods[key{ns, name}] = struct{}{}
			}
		}
	}
	return true
}

// SetWaypointTunnelH3 records whether the waypoint of Gateway ns/name serves HBONE over
// HTTP/3, as it reported when it connected, and reports whether that changed; the Waypoint
// and the bindings to it are recomputed at the next Commit. As for nodes, the last report
// stands while the waypoint is away.
func (x *Index) SetWaypointTunnelH3(ns, name string, h3 bool) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key{ns, name}
	if x.h3Waypoints[k] == h3 {
		return false
	}
	if h3 {
		x.h3Waypoints[k] = true
	} else {
		delete(x.h3Waypoints, k)
	}
	x.dirtyWaypoints[k] = struct{}{}
	return true
}

// waypointTunnel is the tunnel protocol of waypoint k: HBONE_H3 when its Gateway's namespace
// (else the mesh) asks for HTTP/3 and the waypoint serves it, else HBONE. The caller holds mu.
func (x *Index) waypointTunnel(k key) configv1.TunnelProtocol {
	want := x.opts.TunnelProtocol == TunnelModeHBONEH3
	if ns := x.namespaces[k.ns]; ns != nil {
		if v, ok := ns.Labels[LabelTunnelProtocol]; ok {
			want = v == TunnelModeHBONEH3
		}
	}
	return TunnelProtocol(true, want, x.h3Waypoints[k])
}
