package xdsclient

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	corev3 "ambit.dev/proto/xds/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
)

// Node metadata keys in DeltaDiscoveryRequest.node.metadata.
const (
	MetaNodeName          = "NODE_NAME"
	MetaKind              = "PROXY_KIND"
	MetaWaypointNamespace = "WAYPOINT_NAMESPACE"
	MetaWaypointName      = "WAYPOINT_NAME"
	// MetaTunnelProtocols lists the tunnel protocols the proxy serves, comma-separated
	// (TunnelHBONE, TunnelHBONEH3). Absent means HBONE only: a proxy that predates HTTP/3,
	// or Istio's. The controller marks a workload HBONE_H3 only when the proxy that
	// terminates its tunnels reported TunnelHBONEH3.
	MetaTunnelProtocols = "TUNNEL_PROTOCOLS"
)

// Tunnel protocols, the values of MetaTunnelProtocols: the names of configv1.TunnelProtocol.
const (
	TunnelHBONE   = "HBONE"
	TunnelHBONEH3 = "HBONE_H3"
)

// Proxy kinds, the value of MetaKind.
const (
	KindZtunnel  = "ztunnel"
	KindWaypoint = "waypoint"
)

// ControllerNamespace and ControllerServiceAccount make the controller's identity.
const (
	ControllerNamespace      = "ambit-system"
	ControllerServiceAccount = "ambit-controller"
)

// ControllerID returns spiffe://<td>/ns/ambit-system/sa/ambit-controller, the identity the
// controller's gRPC listener proves.
func ControllerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "ns", ControllerNamespace, "sa", ControllerServiceAccount)
	if err != nil {
		// Only a zero trust domain gets here; the constant segments are valid.
		return spiffeid.ID{}
	}
	return id
}

// NodeInfo is how a proxy introduces itself to the controller.
type NodeInfo struct {
	// ID identifies this proxy instance, e.g. "ztunnel~node-1" or the waypoint pod's name.
	ID string
	// Node is the name of the node the proxy runs on; it must match the token's node.
	Node string
	// Kind is KindZtunnel or KindWaypoint.
	Kind string
	// WaypointNamespace and WaypointName name the Gateway a waypoint serves; empty for ztunnel.
	WaypointNamespace string
	WaypointName      string
	// TunnelProtocols are the tunnel protocols the proxy serves; empty means HBONE only.
	// Unknown names are kept (a newer proxy's), and ignored by whoever does not know them.
	TunnelProtocols []string
}

// Serves reports whether the proxy said it serves tunnel protocol p.
func (n NodeInfo) Serves(p string) bool {
	if p == TunnelHBONE && len(n.TunnelProtocols) == 0 {
		return true
	}
	return slices.Contains(n.TunnelProtocols, p)
}

// Validate reports the first missing or invalid field.
func (n NodeInfo) Validate() error {
	switch {
	case n.ID == "":
		return errors.New("node: id is empty")
	case n.Node == "":
		return errors.New("node: node name is empty")
	case n.Kind != KindZtunnel && n.Kind != KindWaypoint:
		return fmt.Errorf("node: kind %q is not %q or %q", n.Kind, KindZtunnel, KindWaypoint)
	case n.Kind == KindWaypoint && (n.WaypointNamespace == "" || n.WaypointName == ""):
		return errors.New("node: a waypoint needs its gateway namespace and name")
	}
	return nil
}

// Proto returns n as an Envoy Node.
func (n NodeInfo) Proto() *corev3.Node {
	fields := map[string]*structpb.Value{
		MetaNodeName: structpb.NewStringValue(n.Node),
		MetaKind:     structpb.NewStringValue(n.Kind),
	}
	if n.WaypointNamespace != "" {
		fields[MetaWaypointNamespace] = structpb.NewStringValue(n.WaypointNamespace)
	}
	if n.WaypointName != "" {
		fields[MetaWaypointName] = structpb.NewStringValue(n.WaypointName)
	}
	if len(n.TunnelProtocols) > 0 {
		fields[MetaTunnelProtocols] = structpb.NewStringValue(strings.Join(n.TunnelProtocols, ","))
	}
	return &corev3.Node{Id: n.ID, Metadata: &structpb.Struct{Fields: fields}}
}

// ParseNode reads a NodeInfo back out of an Envoy Node and validates it.
func ParseNode(n *corev3.Node) (NodeInfo, error) {
	if n == nil {
		return NodeInfo{}, errors.New("node: missing")
	}
	str := func(key string) string {
		v, ok := n.GetMetadata().GetFields()[key]
		if !ok {
			return ""
		}
		return v.GetStringValue()
	}
	info := NodeInfo{
		ID:                n.GetId(),
		Node:              str(MetaNodeName),
		Kind:              str(MetaKind),
		WaypointNamespace: str(MetaWaypointNamespace),
		WaypointName:      str(MetaWaypointName),
	}
	for _, p := range strings.Split(str(MetaTunnelProtocols), ",") {
		if p = strings.TrimSpace(p); p != "" && !slices.Contains(info.TunnelProtocols, p) {
			info.TunnelProtocols = append(info.TunnelProtocols, p)
		}
	}
	return info, info.Validate()
}
