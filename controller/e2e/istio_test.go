package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestIstioResources: with Istio's CRDs installed, the controller (as its least-privilege
// ServiceAccount) watches Istio's kinds: a namespace enrolled with istio.io/dataplane-mode,
// an Istio AuthorizationPolicy pushed to the node's ztunnel as an Authorization, one with a
// field Istio does not have refused, each with its verdict in its status (Accepted True, or
// False naming the field), and deleting the policy removes it.
func TestIstioResources(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 60*time.Second)
	if err := e.c.Apply(ctx, "controller/e2e/testdata/istio-crds.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.EnsureNamespace(ctx, "apps", map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
		t.Fatal(err)
	}
	policy := func(name, spec string) []byte {
		return []byte("apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: apps}\nspec: " + spec + "\n")
	}
	// The CRDs take a moment to be served.
	wait.Until(t, settle, "Istio's CRDs served", func() error {
		return e.c.ApplyYAML(ctx, policy("deny-plaintext", `{action: DENY, rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}`))
	})
	if err := e.c.ApplyYAML(ctx, policy("typo", `{rules: [{from: [{source: {principal: [x]}}]}]}`)); err != nil {
		t.Fatal(err)
	}
	e.pod("apps", "web", "default", "node-a", "10.1.0.5")
	tok := e.ztunnelToken("node-a")
	e.startController()
	bundle, _ := e.bundle()
	p := startProxy(t, e.addr, tok, "node-a", bundle)

	wait.Until(t, settle, "the enrolled workload and the Istio policy", func() error {
		if w := p.workload("apps", "web"); w == nil || w.GetTunnelProtocol() != configv1.TunnelProtocol_HBONE {
			return fmt.Errorf("workload %v: the namespace is enrolled with istio.io/dataplane-mode", w)
		}
		a := held[*configv1.Authorization](p, configv1.AuthorizationTypeURL, "apps", "istio:deny-plaintext")
		if a == nil || a.GetAction() != configv1.Authorization_DENY || a.GetScope() != configv1.Authorization_NAMESPACE {
			return fmt.Errorf("authorization %v", a)
		}
		return nil
	})
	if a := held[*configv1.Authorization](p, configv1.AuthorizationTypeURL, "apps", "istio:typo"); a != nil {
		t.Fatalf("the policy with a field Istio does not have was pushed: %v", a)
	}
	gvr := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	// The leader writes each policy's verdict into its status, with the ServiceAccount's
	// update on authorizationpolicies/status.
	accepted := func(name string) (status, reason, message string, err error) {
		u, err := e.c.Dynamic.Resource(gvr).Namespace("apps").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", "", "", err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Accepted" {
				return fmt.Sprint(m["status"]), fmt.Sprint(m["reason"]), fmt.Sprint(m["message"]), nil
			}
		}
		return "", "", "", fmt.Errorf("no Accepted condition: %v", u.Object["status"])
	}
	wait.Until(t, settle, "the policies' status", func() error {
		if st, reason, msg, err := accepted("deny-plaintext"); err != nil || st != "True" || reason != "Accepted" {
			return fmt.Errorf("deny-plaintext: Accepted %s %s %q, %v", st, reason, msg, err)
		}
		if st, reason, msg, err := accepted("typo"); err != nil || st != "False" || reason != "Invalid" ||
			!strings.Contains(msg, `unknown field "spec.rules[0].from[0].source.principal"`) {
			return fmt.Errorf("typo: Accepted %s %s %q, %v", st, reason, msg, err)
		}
		return nil
	})
	if err := e.c.Dynamic.Resource(gvr).Namespace("apps").Delete(context.Background(), "deny-plaintext", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "the policy removed", func() error {
		if a := held[*configv1.Authorization](p, configv1.AuthorizationTypeURL, "apps", "istio:deny-plaintext"); a != nil {
			return fmt.Errorf("still held: %v", a)
		}
		return nil
	})
}
