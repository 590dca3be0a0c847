package waypointdeploy

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ReasonConflict is the Programmed=False reason when an object the waypoint needs exists
// and belongs to someone else: the reconciler never takes it over.
const ReasonConflict = "Conflict"

// outcome is what a reconcile of one ambit-waypoint Gateway came to.
type outcome struct {
	// invalid: the Gateway, or what the template renders for it, cannot be used.
	invalid error
	// conflict: an object of the waypoint's name exists and is not the Gateway's.
	conflict error
	// service and deployment as applied or found, when neither of the above.
	service, deployment *unstructured.Unstructured
}

// gatewayStatus returns the Gateway's conditions Accepted and Programmed (their last
// transition kept when their status does not change) and its addresses: the Service's
// cluster IPs. Programmed is True once the Service has an address and the Deployment an
// available replica.
func gatewayStatus(gw *gatewayv1.Gateway, o outcome, now metav1.Time) ([]metav1.Condition, []gatewayv1.GatewayStatusAddress) {
	accepted := metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "the controller runs this waypoint"}
	programmed := metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse}
	var addrs []gatewayv1.GatewayStatusAddress
	switch {
	case o.invalid != nil:
		accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalid), o.invalid.Error()
		programmed.Reason, programmed.Message = string(gatewayv1.GatewayReasonInvalid), "not accepted: "+o.invalid.Error()
	case o.conflict != nil:
		programmed.Reason, programmed.Message = ReasonConflict, o.conflict.Error()
	default:
		addrs = serviceAddresses(o.service)
		avail, _, _ := unstructured.NestedInt64(o.deployment.Object, "status", "availableReplicas")
		switch {
		case len(addrs) == 0:
			programmed.Reason = string(gatewayv1.GatewayReasonAddressNotAssigned)
			programmed.Message = fmt.Sprintf("Service %s/%s has no cluster IP yet", o.service.GetNamespace(), o.service.GetName())
		case avail == 0:
			programmed.Reason = string(gatewayv1.GatewayReasonPending)
			programmed.Message = fmt.Sprintf("Deployment %s/%s has no available replica yet", o.deployment.GetNamespace(), o.deployment.GetName())
		default:
			programmed.Status, programmed.Reason = metav1.ConditionTrue, string(gatewayv1.GatewayReasonProgrammed)
			programmed.Message = fmt.Sprintf("%d available replica(s) behind %s", avail, addrs[0].Value)
		}
	}
	cur := slices.Clone(gw.Status.Conditions)
	var conds []metav1.Condition
	for _, c := range []metav1.Condition{accepted, programmed} {
		c.ObservedGeneration, c.LastTransitionTime = gw.Generation, now
		meta.SetStatusCondition(&cur, c)
		conds = append(conds, *meta.FindStatusCondition(cur, c.Type))
	}
	return conds, addrs
}

func serviceAddresses(svc *unstructured.Unstructured) []gatewayv1.GatewayStatusAddress {
	ips, _, _ := unstructured.NestedStringSlice(svc.Object, "spec", "clusterIPs")
	if len(ips) == 0 {
		if ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP"); ip != "" {
			ips = []string{ip}
		}
	}
	var out []gatewayv1.GatewayStatusAddress
	for _, ip := range ips {
		if ip != "" && ip != "None" {
			t := gatewayv1.IPAddressType
			out = append(out, gatewayv1.GatewayStatusAddress{Type: &t, Value: ip})
		}
	}
	return out
}

// statusUpToDate reports whether gw's status already says conds and addrs, so that nothing
// is written.
func statusUpToDate(gw *gatewayv1.Gateway, conds []metav1.Condition, addrs []gatewayv1.GatewayStatusAddress) bool {
	for _, c := range conds {
		have := meta.FindStatusCondition(gw.Status.Conditions, c.Type)
		if have == nil || have.Status != c.Status || have.Reason != c.Reason || have.Message != c.Message ||
			have.ObservedGeneration != c.ObservedGeneration {
			return false
		}
	}
	return slices.EqualFunc(gw.Status.Addresses, addrs, func(a, b gatewayv1.GatewayStatusAddress) bool {
		return a.Value == b.Value && addressType(a.Type) == addressType(b.Type)
	})
}

func addressType(t *gatewayv1.AddressType) gatewayv1.AddressType {
	if t == nil {
		return gatewayv1.IPAddressType // the API's default
	}
	return *t
}
