// Package enrol decides whether a pod belongs to the mesh on its node, from its labels and its
// namespace's, as the controller does (design.md, Names and ports): the label
// ambit.dev/dataplane-mode, with Istio's istio.io/dataplane-mode as an alias, ambit's winning
// when both are set. A pod's own label wins over its namespace's; "ambient" enrols, any
// other value on the pod (e.g. "none") opts it out.
package enrol

// Labels and values of enrolment.
const (
	Label      = "ambit.dev/dataplane-mode"
	IstioLabel = "istio.io/dataplane-mode"
	Ambient    = "ambient"
)

// mode is the dataplane mode a label set names, and whether it names one.
func mode(labels map[string]string) (string, bool) {
	if v, ok := labels[Label]; ok {
		return v, true
	}
	v, ok := labels[IstioLabel]
	return v, ok
}

// Ambient reports whether a pod with podLabels in a namespace with nsLabels is enrolled.
func IsAmbient(podLabels, nsLabels map[string]string) bool {
	if v, ok := mode(podLabels); ok {
		return v == Ambient
	}
	v, _ := mode(nsLabels)
	return v == Ambient
}

// ClusterName is the controller's default cluster name, the first part of a pod's workload
// UID (controller/internal/model.DefaultCluster).
const ClusterName = "Kubernetes"

// WorkloadUID is the UID under which the controller pushes a pod's workload to ztunnel, and
// so the UID a pod is registered under on the node API.
func WorkloadUID(namespace, name string) string {
	return ClusterName + "//Pod/" + namespace + "/" + name
}
