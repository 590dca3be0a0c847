package kubetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

var authorizationPolicies = schema.GroupVersionResource{Group: "security.ambit.dev", Version: "v1alpha1", Resource: "authorizationpolicies"}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestCluster starts one cluster and checks, against it, everything the end-to-end tests
// rely on the harness for.
func TestCluster(t *testing.T) {
	c := Start(t)
	ctx := testContext(t)

	t.Run("CRDsEstablished", func(t *testing.T) {
		for _, name := range []string{
			"authorizationpolicies.security.ambit.dev",
			"peerauthentications.security.ambit.dev",
			"gatewayclasses.gateway.networking.k8s.io",
			"gateways.gateway.networking.k8s.io",
			"httproutes.gateway.networking.k8s.io",
			"grpcroutes.gateway.networking.k8s.io",
		} {
			crd, err := c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Errorf("CRD %s: %v", name, err)
				continue
			}
			if !conditionTrue(crd, "Established") {
				t.Errorf("CRD %s is not Established: %v", name, crd.Object["status"])
			}
		}
		for _, gvk := range []schema.GroupVersionKind{
			{Group: "security.ambit.dev", Version: "v1alpha1", Kind: "PeerAuthentication"},
			{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "HTTPRoute"},
		} {
			if _, err := c.Mapping(ctx, gvk); err != nil {
				t.Errorf("kind %s not served: %v", gvk, err)
			}
		}
	})

	// The Gateway API CRDs are the experimental channel's: on the standard channel's the API
	// server prunes an HTTPRoute rule's retry (GEP-1731) without a word, and the waypoint
	// would never retry what the user asked it to.
	t.Run("HTTPRouteRetryKept", func(t *testing.T) {
		crd, err := c.Dynamic.Resource(crdGVR).Get(ctx, "httproutes.gateway.networking.k8s.io", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ch := crd.GetAnnotations()["gateway.networking.k8s.io/channel"]; ch != "experimental" {
			t.Errorf("HTTPRoute CRD channel %q, want experimental", ch)
		}
		route := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "gateway.networking.k8s.io/v1",
			"kind":       "HTTPRoute",
			"metadata":   map[string]any{"name": "retrying", "namespace": "default"},
			"spec": map[string]any{
				"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "web"}},
				"rules": []any{map[string]any{
					"backendRefs": []any{map[string]any{"name": "web", "port": int64(80)}},
					"retry":       map[string]any{"attempts": int64(3), "codes": []any{int64(503)}, "backoff": "25ms"},
				}},
			},
		}}
		httpRoutes := schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
		if _, err := c.Dynamic.Resource(httpRoutes).Namespace("default").Create(ctx, route, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		back, err := c.Dynamic.Resource(httpRoutes).Namespace("default").Get(ctx, "retrying", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var typed gatewayv1.HTTPRoute
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(back.Object, &typed); err != nil {
			t.Fatal(err)
		}
		rt := typed.Spec.Rules[0].Retry
		if rt == nil || rt.Attempts == nil || *rt.Attempts != 3 || len(rt.Codes) != 1 || rt.Codes[0] != 503 || rt.Backoff == nil || *rt.Backoff != "25ms" {
			t.Fatalf("HTTPRoute read back with retry %+v (spec %v); want attempts 3, codes [503], backoff 25ms", rt, back.Object["spec"])
		}
	})

	// What ambit reads of an HTTPRoute's filters and matches, experimental fields included
	// (a mirror's percent and fraction, CORS), passes the CRD's validation and comes back
	// unpruned: the model compiles the object read back as the one written.
	t.Run("HTTPRouteFiltersKept", func(t *testing.T) {
		const doc = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filtered, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - path: {type: RegularExpression, value: "/users/[0-9]+"}
      headers: [{type: RegularExpression, name: x-tenant, value: "team-(a|b)"}]
      queryParams: [{type: RegularExpression, name: id, value: "[a-f0-9]{8}"}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-env, value: prod}], remove: [x-debug]}
    - type: URLRewrite
      urlRewrite: {hostname: api.internal, path: {type: ReplaceFullPath, replaceFullPath: /by-id}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-shadow, port: 80}, percent: 10}
    - type: RequestMirror
      requestMirror: {backendRef: {name: audit, port: 80}, fraction: {numerator: 1, denominator: 1000}}
    - type: CORS
      cors: {allowOrigins: ["https://app.example.com"], allowMethods: [GET], maxAge: 600}
    backendRefs:
    - name: web
      port: 80
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}]
  - matches: [{path: {type: PathPrefix, value: /shop}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /store}}
`
		objs, err := DecodeYAML([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var written gatewayv1.HTTPRoute
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[0].Object, &written); err != nil {
			t.Fatal(err)
		}
		if err := c.ApplyYAML(ctx, []byte(doc)); err != nil {
			t.Fatal(err)
		}
		httpRoutes := schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
		back, err := c.Dynamic.Resource(httpRoutes).Namespace("default").Get(ctx, "filtered", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var read gatewayv1.HTTPRoute
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(back.Object, &read); err != nil {
			t.Fatal(err)
		}
		want, err := model.ConvertHTTPRoute(&written, "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		got, err := model.ConvertHTTPRoute(&read, "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		rc := func(a []model.AttachedRoutes) *configv1.RouteConfig {
			return model.BuildRouteConfig("web", "default", a)
		}
		if !proto.Equal(rc(got), rc(want)) {
			t.Fatalf("read back, the route compiles to\n%v\nwritten, to\n%v", rc(got), rc(want))
		}
		if m := rc(got).Routes; len(m) != 2 || len(m[1].Mirrors) != 2 || m[1].Mirrors[1].Percentage != 0.1 || m[1].Cors == nil {
			t.Fatalf("routes %v: want the redirect first, then the rule with two mirrors (10 %% and 0.1 %%) and CORS", m)
		}
	})

	t.Run("AuthorizationPolicySchema", func(t *testing.T) {
		valid := policy("allow-frontend", "ALLOW")
		if _, err := c.Dynamic.Resource(authorizationPolicies).Namespace("default").Create(ctx, valid, metav1.CreateOptions{}); err != nil {
			t.Fatalf("valid AuthorizationPolicy rejected: %v", err)
		}
		invalid := policy("maybe", "MAYBE")
		_, err := c.Dynamic.Resource(authorizationPolicies).Namespace("default").Create(ctx, invalid, metav1.CreateOptions{})
		if err == nil {
			t.Fatal("AuthorizationPolicy with action MAYBE was accepted; want the CRD schema to reject it")
		}
		if !apierrors.IsInvalid(err) {
			t.Fatalf("AuthorizationPolicy with action MAYBE: got %v, want an Invalid (422) error", err)
		}
		for _, want := range []string{"spec.action", `"MAYBE"`, `"ALLOW"`, `"DENY"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
	})

	t.Run("TokenReview", func(t *testing.T) {
		if err := c.EnsureServiceAccount(ctx, "tokens", "ztunnel"); err != nil {
			t.Fatal(err)
		}
		token, err := c.TokenFor(ctx, "tokens", "ztunnel")
		if err != nil {
			t.Fatal(err)
		}
		user := review(ctx, t, c.Client, token)
		if !user.Authenticated {
			t.Fatalf("TokenReview of a fresh token: not authenticated: %s", user.Error)
		}
		if want := "system:serviceaccount:tokens:ztunnel"; user.User.Username != want {
			t.Errorf("TokenReview user = %q, want %q", user.User.Username, want)
		}

		// A token with a changed signature must not pass.
		forged := token[:len(token)-4] + flip(token[len(token)-4:])
		if got := review(ctx, t, c.Client, forged); got.Authenticated {
			t.Errorf("TokenReview authenticated a forged token as %q", got.User.Username)
		}
		// Nor a token of another issuer's audience.
		other, err := c.Token(ctx, "tokens", "ztunnel", authenticationv1.TokenRequestSpec{Audiences: []string{"someone-else"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := review(ctx, t, c.Client, other); got.Authenticated {
			t.Errorf("TokenReview authenticated a token for audience someone-else as %q", got.User.Username)
		}
	})

	t.Run("PodBoundToken", func(t *testing.T) {
		// The namespace gets its "default" ServiceAccount from the harness, so a pod admits.
		if err := c.EnsureServiceAccount(ctx, "nodes", "ztunnel"); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-a", Namespace: "nodes"},
			Spec: corev1.PodSpec{
				ServiceAccountName: "ztunnel",
				NodeName:           "node-a",
				Containers:         []corev1.Container{{Name: "ztunnel", Image: "ztunnel"}},
			},
		}
		pod, err := c.Client.CoreV1().Pods("nodes").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a pod: %v", err)
		}
		token, err := c.Token(ctx, "nodes", "ztunnel", authenticationv1.TokenRequestSpec{
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		})
		if err != nil {
			t.Fatal(err)
		}
		user := review(ctx, t, c.Client, token)
		if !user.Authenticated {
			t.Fatalf("pod-bound token not authenticated: %s", user.Error)
		}
		for key, want := range map[string]string{
			"authentication.kubernetes.io/pod-name":  "ztunnel-a",
			"authentication.kubernetes.io/pod-uid":   string(pod.UID),
			"authentication.kubernetes.io/node-name": "node-a",
		} {
			if got := user.User.Extra[key]; len(got) != 1 || got[0] != want {
				t.Errorf("TokenReview extra %s = %v, want [%s]", key, got, want)
			}
		}
		// Deleting the pod revokes its tokens. (A token reviewed before stays valid for the
		// API server's 10 s token cache, so check one that was not.)
		unseen, err := c.Token(ctx, "nodes", "ztunnel", authenticationv1.TokenRequestSpec{
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Client.CoreV1().Pods("nodes").Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		// The API server's authenticator reads pods from its informer cache: allow it a moment.
		wait.Until(t, 10*time.Second, "the token bound to a deleted pod refused", func() error {
			if got := review(ctx, t, c.Client, unseen); got.Authenticated {
				return fmt.Errorf("still authenticates as %q", got.User.Username)
			}
			return nil
		})
	})

	t.Run("RBACDeniesServiceAccount", func(t *testing.T) {
		cfg := c.ClientAs("rbac", "nobody")
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.CoreV1().Pods("rbac").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("ServiceAccount without permissions listing pods: got %v, want Forbidden", err)
		}
		if !strings.Contains(err.Error(), "system:serviceaccount:rbac:nobody") {
			t.Errorf("Forbidden error %q does not name the ServiceAccount", err)
		}

		// The same client passes once a Role allows it: the denial was RBAC's, not a broken
		// client.
		role := &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: "rbac"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
		}
		if _, err := c.Client.RbacV1().Roles("rbac").Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: "rbac"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "nobody", Namespace: "rbac"}},
		}
		if _, err := c.Client.RbacV1().RoleBindings("rbac").Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second) // the RBAC authorizer's cache
		for {
			_, err = client.CoreV1().Pods("rbac").List(ctx, metav1.ListOptions{})
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("listing pods after the RoleBinding: %v", err)
		}
		if _, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("listing pods of another namespace: got %v, want Forbidden", err)
		}
	})
}

// TestMissingAPIServer: without the binary the harness fails, saying how to build it.
func TestMissingAPIServer(t *testing.T) {
	t.Setenv("AMBIT_KUBE_APISERVER", t.TempDir()+"/no-such-kube-apiserver")
	_, err := start(t, Options{}.withDefaults(t))
	if err == nil {
		t.Fatal("start succeeded without a kube-apiserver binary")
	}
	if !strings.Contains(err.Error(), "make kube-apiserver") || !strings.Contains(err.Error(), "no-such-kube-apiserver") {
		t.Errorf("error %q does not name the path and `make kube-apiserver`", err)
	}
}

func policy(name, action string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.ambit.dev/v1alpha1",
		"kind":       "AuthorizationPolicy",
		"metadata":   map[string]any{"name": name, "namespace": "default"},
		"spec": map[string]any{
			"action":   action,
			"selector": map[string]any{"matchLabels": map[string]any{"app": "backend"}},
			"rules": []any{map[string]any{
				"from": []any{map[string]any{"source": map[string]any{
					"principals": []any{"spiffe://cluster.local/ns/default/sa/frontend"},
				}}},
				"to": []any{map[string]any{"operation": map[string]any{"ports": []any{"8080"}}}},
			}},
		},
	}}
}

func review(ctx context.Context, t *testing.T, client kubernetes.Interface, token string) authenticationv1.TokenReviewStatus {
	t.Helper()
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx,
		&authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return tr.Status
}

func flip(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
	}
	return string(b)
}

func conditionTrue(obj *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		cm, _ := c.(map[string]any)
		if cm["type"] == typ && cm["status"] == "True" {
			return true
		}
	}
	return false
}
