package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of this package.
var GroupVersion = schema.GroupVersion{Group: "security.ambit.dev", Version: "v1alpha1"}

// AuthorizationPolicy allows or denies traffic to the workloads it selects. With no
// selector and no targetRefs it applies to the whole namespace (to the whole mesh in the
// root namespace). DENY policies are evaluated first; if any ALLOW policy applies to a
// workload, traffic that matches none of them is denied. Rules with methods or paths need
// a waypoint: on a workload without one they deny everything (policy fails closed).
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=ap
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AuthorizationPolicySpec `json:"spec,omitempty"`
	// Status is written by the controller's leader: whether the policy is in force.
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// PolicyStatus says whether the controller put a policy in force.
type PolicyStatus struct {
	// Conditions: Accepted is True (reason Accepted) when the policy is in force, True with
	// reason PartiallyInvalid when a part of it is not (the message names the field), False
	// (reason Invalid) when it is refused and its last good version stays in force.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the generation of the policy the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// AuthorizationPolicySpec is the desired behaviour of an AuthorizationPolicy.
type AuthorizationPolicySpec struct {
	// TargetRefs names the Gateway (waypoint) or Service the policy applies to. Mutually
	// exclusive with selector.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	// Selector picks the workloads (pods) the policy applies to by label.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// Action is ALLOW (the default) or DENY.
	// +optional
	// +kubebuilder:validation:Enum=ALLOW;DENY
	// +kubebuilder:default=ALLOW
	Action string `json:"action,omitempty"`
	// Rules match requests; a request matches the policy if it matches any rule. An ALLOW
	// policy with no rules allows nothing; a DENY policy with an empty rule denies all.
	// +optional
	Rules []Rule `json:"rules,omitempty"`
}

// PolicyTargetReference names one object in the policy's namespace.
type PolicyTargetReference struct {
	// Group of the target: "gateway.networking.k8s.io" for a Gateway, "" for a Service.
	// +optional
	Group string `json:"group,omitempty"`
	// Kind of the target: Gateway or Service.
	// +kubebuilder:validation:Enum=Gateway;Service
	Kind string `json:"kind"`
	// Name of the target.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// WorkloadSelector selects pods by label.
type WorkloadSelector struct {
	// MatchLabels must all be present on a pod with the same values.
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// Rule matches a request when every non-empty field matches: any entry of from, and any
// entry of to.
type Rule struct {
	// From lists sources; empty matches any source.
	// +optional
	From []RuleFrom `json:"from,omitempty"`
	// To lists operations; empty matches any operation.
	// +optional
	To []RuleTo `json:"to,omitempty"`
}

// RuleFrom wraps one source.
type RuleFrom struct {
	Source Source `json:"source"`
}

// Source matches the peer of a connection. Every non-empty field must match.
type Source struct {
	// Principals are SPIFFE IDs without the scheme, e.g. "cluster.local/ns/default/sa/web",
	// as Istio writes them; "*", "prefix*" and "*suffix" are allowed.
	// +optional
	Principals []string `json:"principals,omitempty"`
	// NotPrincipals excludes principals.
	// +optional
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	// Namespaces of the peer's identity.
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
	// NotNamespaces excludes namespaces.
	// +optional
	NotNamespaces []string `json:"notNamespaces,omitempty"`
	// IPBlocks are source addresses or CIDRs, e.g. "10.0.0.0/8" or "10.1.2.3".
	// +optional
	IPBlocks []string `json:"ipBlocks,omitempty"`
	// NotIPBlocks excludes addresses or CIDRs.
	// +optional
	NotIPBlocks []string `json:"notIpBlocks,omitempty"`
}

// RuleTo wraps one operation.
type RuleTo struct {
	Operation Operation `json:"operation"`
}

// Operation matches what the request asks for. Methods and paths are L7 and are enforced
// only by a waypoint.
type Operation struct {
	// Ports of the destination, as strings, e.g. "8080".
	// +optional
	Ports []string `json:"ports,omitempty"`
	// NotPorts excludes ports.
	// +optional
	NotPorts []string `json:"notPorts,omitempty"`
	// Methods are HTTP methods, e.g. GET.
	// +optional
	Methods []string `json:"methods,omitempty"`
	// NotMethods excludes methods.
	// +optional
	NotMethods []string `json:"notMethods,omitempty"`
	// Paths are HTTP paths; "*", "prefix*" and "*suffix" are allowed.
	// +optional
	Paths []string `json:"paths,omitempty"`
	// NotPaths excludes paths.
	// +optional
	NotPaths []string `json:"notPaths,omitempty"`
}

// +kubebuilder:object:root=true

// AuthorizationPolicyList is a list of AuthorizationPolicy.
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}

// PeerAuthentication says whether the selected workloads accept plaintext. With no
// selector it applies to the namespace, or to the mesh in the root namespace.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=pa
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mtls.mode`
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec PeerAuthenticationSpec `json:"spec,omitempty"`
	// Status is written by the controller's leader: whether the policy is in force.
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// PeerAuthenticationSpec is the desired behaviour of a PeerAuthentication.
type PeerAuthenticationSpec struct {
	// Selector picks the workloads by label; empty means the whole namespace.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// MTLS sets the mutual TLS mode.
	// +optional
	MTLS *MTLS `json:"mtls,omitempty"`
}

// MTLS is the mutual TLS setting.
type MTLS struct {
	// Mode is STRICT (HBONE only) or PERMISSIVE (plaintext also accepted). Default
	// PERMISSIVE, as in Istio.
	// +kubebuilder:validation:Enum=STRICT;PERMISSIVE
	Mode string `json:"mode,omitempty"`
}

// +kubebuilder:object:root=true

// PeerAuthenticationList is a list of PeerAuthentication.
type PeerAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PeerAuthentication `json:"items"`
}

// AddToScheme registers the types with a scheme, for clients and informers.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&AuthorizationPolicy{}, &AuthorizationPolicyList{},
		&PeerAuthentication{}, &PeerAuthenticationList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
