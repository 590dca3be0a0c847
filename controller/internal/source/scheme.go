package source

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	"ambit.dev/controller/internal/istioapi"
)

// NewScheme returns a scheme with the core Kubernetes types, Gateway API v1 and ambit's
// security.ambit.dev/v1alpha1, and Istio's networking.istio.io and security.istio.io kinds
// that ambit reads (package istioapi).
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, gatewayv1.Install, secv1.AddToScheme, istioapi.AddToScheme} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// strictDecoder decodes YAML or JSON manifests and rejects unknown and duplicate fields.
func strictDecoder(s *runtime.Scheme) runtime.Decoder {
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}
