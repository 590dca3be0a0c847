package model

import (
	"testing"

	configv1 "ambit.dev/proto/config/v1"

	"ambit.dev/controller/internal/istioapi"
)

// TestVirtualServiceRedirectDerivePort: a redirect's derivePort compiles to the field
// HTTPRoute's redirects use for Gateway API's port rules; an unknown value, or one beside
// port, is refused naming the field.
func TestVirtualServiceRedirectDerivePort(t *testing.T) {
	vs := func(redirect string) *istioapi.VirtualService {
		return istioObj[*istioapi.VirtualService](t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - redirect: `+redirect+`
`)
	}
	for redirect, want := range map[string]configv1.Redirect_DerivePort{
		"{scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}":      configv1.Redirect_FROM_PROTOCOL_DEFAULT,
		"{authority: example.com, derivePort: FROM_REQUEST_PORT}": configv1.Redirect_FROM_REQUEST_PORT,
		"{authority: example.com}":                                configv1.Redirect_KEEP,
	} {
		got, err := ConvertVirtualService(vs(redirect), Options{}.WithDefaults())
		if err != nil {
			t.Fatalf("%s: %v", redirect, err)
		}
		if d := got.Parents[webRC][0].Route.Redirect.GetDerivePort(); d != want {
			t.Errorf("%s: derive_port %v, want %v", redirect, d, want)
		}
	}
	for _, redirect := range []string{"{derivePort: FROM_SOMEWHERE}", "{derivePort: KEEP}", "{port: 8443, derivePort: FROM_REQUEST_PORT}"} {
		_, err := ConvertVirtualService(vs(redirect), Options{}.WithDefaults())
		wantObjErr(t, err, KindIstioVirtualService, "demo", "web", "spec.http[0].redirect.derivePort")
	}
}
