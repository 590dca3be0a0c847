package model

import (
	"errors"
	"strings"
	"testing"

	"ambit.dev/controller/internal/istioapi"
)

// TestIstioAuthorizationPartial: the rules of Istio AuthorizationPolicies that fail closed are
// listed by Index.Partial, one per rule with the first field ambit does not enforce, apart
// from the refused objects of Errors; a fixed or deleted policy leaves the list.
func TestIstioAuthorizationPartial(t *testing.T) {
	allow := istioObj[*istioapi.AuthorizationPolicy](t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: demo}
spec:
  rules:
  - from: [{source: {namespaces: [demo]}}]
  - from: [{source: {namespaces: [demo], requestPrincipals: ["*"]}}]
    to: [{operation: {notHosts: [admin.example.com]}}]
`)
	deny := istioObj[*istioapi.AuthorizationPolicy](t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sni, namespace: demo}
spec:
  action: DENY
  rules:
  - when: [{key: connection.sni, values: [db.example.com]}]
`)
	custom := istioObj[*istioapi.AuthorizationPolicy](t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: demo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
`)
	x := istioTestIndex(t, allow, deny, custom)
	want := map[string]string{
		"AuthorizationPolicy.security.istio.io demo/jwt: spec.rules[1].from[0].source.requestPrincipals: not enforced by ambit: the rule is left out of this ALLOW policy, which allows less": "",
		"AuthorizationPolicy.security.istio.io demo/deny-sni: spec.rules[0].when[0].key: not enforced by ambit: the rule matches every request of this DENY policy":                           "",
		"AuthorizationPolicy.security.istio.io demo/ext-authz: spec.action: CUSTOM: no external authorizer: the policy denies every request it applies to":                                    "",
	}
	got := x.Partial()
	if len(got) != len(want) || len(x.Errors()) != 0 {
		t.Fatalf("Partial() = %v, Errors() = %v; want %d partial, no errors", got, x.Errors(), len(want))
	}
	for _, err := range got {
		var oe *ObjectError
		if _, ok := want[err.Error()]; !ok || !errors.As(err, &oe) || !oe.Partial {
			t.Errorf("partial %q (%T) is not one of %v", err, err, want)
		}
	}
	// Fixed, the policy leaves the list; deleted, so does another.
	allow.Spec.Rules = allow.Spec.Rules[:1]
	if err := x.Upsert(allow); err != nil {
		t.Fatal(err)
	}
	if err := x.Delete(custom); err != nil {
		t.Fatal(err)
	}
	if got := x.Partial(); len(got) != 1 || !strings.Contains(got[0].Error(), "demo/deny-sni") {
		t.Fatalf("after the fix and the delete: %v", got)
	}
}
