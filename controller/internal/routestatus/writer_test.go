package routestatus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"ambit.dev/controller/internal/kubetest"
	"ambit.dev/mesh/wait"
)

// TestWriterRealAPIServer runs the Writer against a real kube-apiserver: a route to two
// Services gets Accepted and ResolvedRefs true; a backend Service deleted turns ResolvedRefs
// false naming it, and its return turns it true again; an invalid route gets Accepted false
// naming the field; another controller's entry of the route stays. GRPCRoutes get the same:
// true for a valid one, Accepted false naming the field for an invalid regex, ResolvedRefs
// false for a mirror to a Service that does not exist.
func TestWriterRealAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	gw, err := gatewayclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web", "web-v1", "web-v2"} {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Port: 80}}}}
		if _, err := c.Client.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w := &Writer{Kube: c.Client, Gateway: gw, Domain: "cluster.local", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() {
		wcancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	good := route("web-v1", "web-v2")
	if _, err := gw.GatewayV1().HTTPRoutes("demo").Create(ctx, good, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyYAML(ctx, []byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v1, port: 80}]
    matches: [{path: {type: RegularExpression, value: "/users/(\\d+"}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{method: {service: echo.Echo}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-via, value: mesh}]}}]
    backendRefs: [{name: web-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-bad, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{method: {type: RegularExpression, service: "echo.(Echo"}}]
    backendRefs: [{name: web-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-mirror, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-shadow, port: 80}}}]
    backendRefs: [{name: web-v1, port: 80}]
`)); err != nil {
		t.Fatal(err)
	}
	conds := func(name string) (map[string]metav1.Condition, error) {
		var parents []gatewayv1.RouteParentStatus
		if kind, n, ok := strings.Cut(name, "/"); ok && kind == "grpc" {
			r, err := gw.GatewayV1().GRPCRoutes("demo").Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			parents = r.Status.Parents
		} else {
			r, err := gw.GatewayV1().HTTPRoutes("demo").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			parents = r.Status.Parents
		}
		out := map[string]metav1.Condition{}
		for _, p := range parents {
			if p.ControllerName == ControllerName {
				for _, c := range p.Conditions {
					out[c.Type] = c
				}
			}
		}
		return out, nil
	}
	expect := func(what, name string, accepted, resolved metav1.ConditionStatus, reason string) {
		t.Helper()
		wait.Until(t, 20*time.Second, what, func() error {
			c, err := conds(name)
			if err != nil {
				return err
			}
			a, r := c[Accepted], c[ResolvedRefs]
			if a.Status != accepted || r.Status != resolved || (reason != "" && a.Reason != reason && r.Reason != reason) {
				return fmt.Errorf("Accepted %s %s %q, ResolvedRefs %s %s %q", a.Status, a.Reason, a.Message, r.Status, r.Reason, r.Message)
			}
			return nil
		})
	}
	expect("the valid route accepted and resolved", "split", "True", "True", "")
	expect("the invalid route refused naming the field", "bad-regex", "False", "True", "UnsupportedValue")
	if c, _ := conds("bad-regex"); c[Accepted].Message == "" || !contains(c[Accepted].Message, "spec.rules[0].matches[0].path.value") {
		t.Errorf("refusal does not name the field: %q", c[Accepted].Message)
	}
	expect("the valid GRPCRoute accepted and resolved", "grpc/echo", "True", "True", "")
	expect("the invalid GRPCRoute refused", "grpc/echo-bad", "False", "True", "UnsupportedValue")
	if c, _ := conds("grpc/echo-bad"); !contains(c[Accepted].Message, "spec.rules[0].matches[0].method.service") {
		t.Errorf("GRPCRoute refusal does not name the field: %q", c[Accepted].Message)
	}
	expect("a GRPCRoute mirroring to no Service", "grpc/echo-mirror", "True", "False", "BackendNotFound")
	if c, _ := conds("grpc/echo-mirror"); !contains(c[ResolvedRefs].Message, "spec.rules[0].filters[0].requestMirror.backendRef") {
		t.Errorf("ResolvedRefs does not name the mirror: %q", c[ResolvedRefs].Message)
	}
	if err := c.Client.CoreV1().Services("demo").Delete(ctx, "web-v2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("a backend gone", "split", "True", "False", "BackendNotFound")
	if _, err := c.Client.CoreV1().Services("demo").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web-v2"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("the backend back", "split", "True", "True", "")
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
