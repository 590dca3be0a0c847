package model

import (
	"cmp"

	corev1 "k8s.io/api/core/v1"
)

// ScheduledOn reports whether a pod of namespace ns that runs as ServiceAccount sa is bound to
// node and has not finished (pending included). It is the CA's proof that the node's ztunnel
// may ask for that identity before the pod runs: ztunnel captures a pod at the CNI ADD,
// before the pod has an IP in the API and so before it is a Workload.
func (x *Index) ScheduledOn(node, ns, sa string) bool {
	if node == "" {
		return false
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, p := range x.pods[ns] {
		if p.Spec.NodeName == node && cmp.Or(p.Spec.ServiceAccountName, "default") == sa && p.DeletionTimestamp == nil &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return true
		}
	}
	return false
}
