package model

import (
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kptr "k8s.io/utils/ptr"
)

// WaypointGateway is the Gateway that asks for a waypoint named name in namespace ns for
// kind ("serviceaccount", "service" or "namespace"): class ambit-waypoint, the listener mesh
// on 15008 (HBONE). address, when set, is the waypoint's IP (the lab gives it; in Kubernetes
// the Service in front of the waypoint's Deployment does). ConvertGateway reads it back.
func WaypointGateway(ns, name, kind, address string) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		TypeMeta: metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			Labels: map[string]string{LabelWaypointFor: kind}},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: WaypointClass,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	if address != "" {
		gw.Spec.Addresses = []gatewayv1.GatewaySpecAddress{{Type: kptr.To(gatewayv1.IPAddressType), Value: address}}
	}
	return gw
}
