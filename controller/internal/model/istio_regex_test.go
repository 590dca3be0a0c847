package model

import (
	"testing"

	configv1 "ambit.dev/proto/config/v1"

	"ambit.dev/controller/internal/istioapi"
)

// TestVirtualServiceRegexMatches: a VirtualService's regex matches (uri, headers,
// withoutHeaders, queryParams, authority) compile to the RouteMatch regex fields an
// HTTPRoute's RegularExpression matches do; ignoreUriCase makes the uri regex
// case-insensitive.
func TestVirtualServiceRegexMatches(t *testing.T) {
	vs := istioObj[*istioapi.VirtualService](t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match:
    - uri: {regex: "/Users/[0-9]+"}
      ignoreUriCase: true
      headers: {x-tenant: {regex: "team-(a|b)"}}
      withoutHeaders: {x-bot: {regex: ".*crawler.*"}}
      queryParams: {id: {regex: "[a-f0-9]{8}"}}
      authority: {regex: "web(\\.demo)?"}
    route: [{destination: {host: web}}]
`)
	got, err := ConvertVirtualService(vs, Options{}.WithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, "match", &configv1.RouteMatch{
		Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Regex{Regex: "(?i)/Users/[0-9]+"}}, PathIgnoreCase: true,
		Headers: []*configv1.HeaderMatch{
			{Name: "x-bot", Regex: ".*crawler.*", Invert: true},
			{Name: "x-tenant", Regex: "team-(a|b)"},
		},
		QueryParams: []*configv1.QueryMatch{{Name: "id", Regex: "[a-f0-9]{8}"}},
		Authority:   &configv1.HeaderMatch{Regex: `web(\.demo)?`},
	}, got.Parents[webRC][0].Route.Matches[0])
}
