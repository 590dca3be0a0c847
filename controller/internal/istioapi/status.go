package istioapi

import (
	"encoding/json"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IstioStatus is the status of every Istio kind (istio.io/api meta.v1alpha1.IstioStatus),
// served from the status subresource of Istio's CRDs. Ambit's controller writes its
// Accepted and ResolvedRefs conditions here (controller/internal/routestatus); Istio's own
// controller, where one runs, writes validationMessages and conditions of other types, which
// ambit keeps as they are.
type IstioStatus struct {
	Conditions []IstioCondition `json:"conditions,omitempty"`
	// ValidationMessages are istiod's analysis messages; ambit never writes them.
	ValidationMessages []json.RawMessage `json:"validationMessages,omitempty"`
	// ObservedGeneration is the generation the status describes.
	ObservedGeneration Int64OrString `json:"observedGeneration,omitempty"`
}

// IstioCondition is one condition of an IstioStatus: metav1.Condition's fields, plus
// lastProbeTime, with status "True", "False" or "Unknown".
type IstioCondition struct {
	Type               string        `json:"type,omitempty"`
	Status             string        `json:"status,omitempty"`
	LastProbeTime      *metav1.Time  `json:"lastProbeTime,omitempty"`
	LastTransitionTime *metav1.Time  `json:"lastTransitionTime,omitempty"`
	Reason             string        `json:"reason,omitempty"`
	Message            string        `json:"message,omitempty"`
	ObservedGeneration Int64OrString `json:"observedGeneration,omitempty"`
}

// Int64OrString is a protobuf int64 as Istio's CRDs declare it (x-kubernetes-int-or-string):
// protobuf's JSON writes an int64 as a string, Kubernetes clients as a number. Both read;
// it is written as a number.
type Int64OrString int64

func (n *Int64OrString) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		*n = Int64OrString(v)
		return nil
	}
	var v int64
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*n = Int64OrString(v)
	return nil
}
