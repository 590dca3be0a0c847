package istioapi

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The API groups and the versions Istio serves of them.
const (
	NetworkingGroup = "networking.istio.io"
	SecurityGroup   = "security.istio.io"
)

var (
	NetworkingVersions = []string{"v1", "v1beta1", "v1alpha3"}
	SecurityVersions   = []string{"v1", "v1beta1"}
)

// Resources maps each kind to its plural resource name, as the API server serves it.
var Resources = map[string]string{
	"VirtualService":      "virtualservices",
	"DestinationRule":     "destinationrules",
	"AuthorizationPolicy": "authorizationpolicies",
	"PeerAuthentication":  "peerauthentications",
}

// GroupOf returns the API group of kind.
func GroupOf(kind string) string {
	if kind == "VirtualService" || kind == "DestinationRule" {
		return NetworkingGroup
	}
	return SecurityGroup
}

// VersionsOf returns the versions of kind, newest first.
func VersionsOf(kind string) []string {
	if GroupOf(kind) == NetworkingGroup {
		return NetworkingVersions
	}
	return SecurityVersions
}

// New returns an empty object of kind, or nil.
func New(kind string) runtime.Object {
	switch kind {
	case "VirtualService":
		return &VirtualService{}
	case "DestinationRule":
		return &DestinationRule{}
	case "AuthorizationPolicy":
		return &AuthorizationPolicy{}
	case "PeerAuthentication":
		return &PeerAuthentication{}
	}
	return nil
}

// AddToScheme registers every kind under every version of its group.
func AddToScheme(s *runtime.Scheme) error {
	for _, v := range NetworkingVersions {
		gv := schema.GroupVersion{Group: NetworkingGroup, Version: v}
		s.AddKnownTypes(gv, &VirtualService{}, &VirtualServiceList{}, &DestinationRule{}, &DestinationRuleList{})
		metav1.AddToGroupVersion(s, gv)
	}
	for _, v := range SecurityVersions {
		gv := schema.GroupVersion{Group: SecurityGroup, Version: v}
		s.AddKnownTypes(gv, &AuthorizationPolicy{}, &AuthorizationPolicyList{}, &PeerAuthentication{}, &PeerAuthenticationList{})
		metav1.AddToGroupVersion(s, gv)
	}
	return nil
}

// deepCopy copies a plain JSON-shaped value: these types hold only strings, numbers, maps,
// slices and raw JSON, so a JSON round trip is an exact copy.
func deepCopy[T any](in *T) *T {
	if in == nil {
		return nil
	}
	b, err := json.Marshal(in)
	if err != nil {
		panic("istioapi: deep copy: " + err.Error()) // cannot fail for these types
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		panic("istioapi: deep copy: " + err.Error())
	}
	return out
}

func (in *VirtualService) DeepCopyObject() runtime.Object          { return deepCopy(in) }
func (in *VirtualServiceList) DeepCopyObject() runtime.Object      { return deepCopy(in) }
func (in *DestinationRule) DeepCopyObject() runtime.Object         { return deepCopy(in) }
func (in *DestinationRuleList) DeepCopyObject() runtime.Object     { return deepCopy(in) }
func (in *AuthorizationPolicy) DeepCopyObject() runtime.Object     { return deepCopy(in) }
func (in *AuthorizationPolicyList) DeepCopyObject() runtime.Object { return deepCopy(in) }
func (in *PeerAuthentication) DeepCopyObject() runtime.Object      { return deepCopy(in) }
func (in *PeerAuthenticationList) DeepCopyObject() runtime.Object  { return deepCopy(in) }
