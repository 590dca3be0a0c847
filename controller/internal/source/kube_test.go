package source

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/wait"
)

func unstructuredPolicy(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.ambit.dev/v1alpha1",
		"kind":       "AuthorizationPolicy",
		"metadata":   map[string]any{"name": name, "namespace": "demo"},
		"spec":       spec,
	}}
}

func TestKubeSource(t *testing.T) {
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{model.LabelDataplaneMode: model.ModeAmbient}}},
		labPod("web", "10.1.0.1"),
	)
	// Created through the typed client: the fake's object tracker files objects passed to the constructors
	// under v1beta1, whose Gateway is an alias of v1's.
	gw := gatewayfake.NewSimpleClientset() //nolint:staticcheck // NewClientset has no Gateway v1 type mapping in v1.6.3
	if _, err := gw.GatewayV1().Gateways("demo").Create(t.Context(), &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "wp"},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: model.WaypointClass},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		AuthorizationPolicyGVR: "AuthorizationPolicyList",
		PeerAuthenticationGVR:  "PeerAuthenticationList",
	},
		unstructuredPolicy("good", map[string]any{"rules": []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"ports": []any{"80"}}}}}}}),
		unstructuredPolicy("unknown-field", map[string]any{"actoin": "DENY"}),
		unstructuredPolicy("bad-port", map[string]any{"rules": []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"ports": []any{"eighty"}}}}}}}),
	)
	s, logs := newTestStore(t)
	runStore(t, s)
	k := NewKube(KubeClients{Kube: kube, Gateway: gw, Dynamic: dyn}, s, slogFrom(logs), 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	wait.Until(t, 5*time.Second, "synced", synced(s))

	for2 := func(typ string) []string {
		return keys(s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-a"})[typ])
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("workloads %v waypoints %v authz %v\nlogs:\n%s", for2(configv1.WorkloadTypeURL), for2(configv1.WaypointTypeURL), for2(configv1.AuthorizationTypeURL), logs)
		}
	})
	wait.Until(t, 5*time.Second, "initial objects", func() error {
		wl, wp, az := for2(configv1.WorkloadTypeURL), for2(configv1.WaypointTypeURL), for2(configv1.AuthorizationTypeURL)
		if !slices.Equal(wl, []string{"Kubernetes//Pod/demo/web"}) || !slices.Equal(wp, []string{"demo/wp"}) || !slices.Equal(az, []string{"demo/good"}) {
			return fmt.Errorf("workloads %q, waypoints %q, policies %q", wl, wp, az)
		}
		return nil
	})
	out := logs.String()
	if !contains(out, "unknown-field", `unknown field \"spec.actoin\"`) {
		t.Fatalf("no error naming the unknown field:\n%s", out)
	}
	if !contains(out, "AuthorizationPolicy demo/bad-port", "spec.rules[0].to[0].operation.ports[0]") {
		t.Fatalf("no error naming the bad port:\n%s", out)
	}

	steps := []struct {
		name string
		do   func() error
		want []string
	}{
		{"pod added", func() error {
			_, err := kube.CoreV1().Pods("demo").Create(ctx, labPod("api", "10.1.0.2"), metav1.CreateOptions{})
			return err
		}, []string{"Kubernetes//Pod/demo/api", "Kubernetes//Pod/demo/web"}},
		{"pod deleted", func() error {
			return kube.CoreV1().Pods("demo").Delete(ctx, "web", metav1.DeleteOptions{})
		}, []string{"Kubernetes//Pod/demo/api"}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		wait.Until(t, 5*time.Second, st.name, func() error {
			if got := for2(configv1.WorkloadTypeURL); !slices.Equal(got, st.want) {
				return fmt.Errorf("workloads %q, want %q", got, st.want)
			}
			return nil
		})
	}
	wl := s.Index().For(model.Proxy{Kind: model.KindZtunnel})[configv1.WorkloadTypeURL]["Kubernetes//Pod/demo/api"].Message.(*configv1.Workload)
	if wl.TunnelProtocol != configv1.TunnelProtocol_HBONE {
		t.Fatalf("pod in enrolled namespace: tunnel %v", wl.TunnelProtocol)
	}
	if err := dyn.Resource(AuthorizationPolicyGVR).Namespace("demo").Delete(ctx, "good", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, "policy deleted", func() error {
		if got := for2(configv1.AuthorizationTypeURL); len(got) != 0 {
			return fmt.Errorf("policies %q", got)
		}
		return nil
	})
}

// TestKubeSourceIstio: Istio's kinds are watched in the version the API server serves, those
// it does not serve are skipped (the caches still sync), and an Istio object is checked as
// strictly as ambit's.
func TestKubeSourceIstio(t *testing.T) {
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{model.LabelIstioDataplaneMode: model.ModeAmbient}}},
		labPod("web", "10.1.0.1"),
	)
	kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{
		{GroupVersion: "security.istio.io/v1beta1", APIResources: []metav1.APIResource{{Name: "authorizationpolicies", Kind: "AuthorizationPolicy"}}},
		{GroupVersion: "networking.istio.io/v1alpha3", APIResources: []metav1.APIResource{{Name: "virtualservices", Kind: "VirtualService"}}},
	}
	apGVR := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1beta1", Resource: "authorizationpolicies"}
	vsGVR := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1alpha3", Resource: "virtualservices"}
	istioPolicy := func(name string, spec map[string]any) *unstructured.Unstructured {
		u := unstructuredPolicy(name, spec)
		u.SetAPIVersion("security.istio.io/v1beta1")
		return u
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		AuthorizationPolicyGVR: "AuthorizationPolicyList",
		PeerAuthenticationGVR:  "PeerAuthenticationList",
		apGVR:                  "AuthorizationPolicyList",
		vsGVR:                  "VirtualServiceList",
	},
		istioPolicy("good", map[string]any{"action": "DENY", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/demo/sa/bad"}}}}}}}),
		istioPolicy("unknown-field", map[string]any{"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principal": []any{"x"}}}}}}}),
	)
	s, logs := newTestStore(t)
	runStore(t, s)
	k := NewKube(KubeClients{Kube: kube, Gateway: gatewayfake.NewSimpleClientset(), Dynamic: dyn}, s, slogFrom(logs), 0) //nolint:staticcheck // as in TestKubeSource
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	wait.Until(t, 5*time.Second, "synced", synced(s))
	authz := func() []string {
		return keys(s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: "node-a"})[configv1.AuthorizationTypeURL])
	}
	wait.Until(t, 5*time.Second, "the Istio policy", func() error {
		if got := authz(); !slices.Equal(got, []string{"demo/istio:good"}) {
			return fmt.Errorf("policies %q; logs:\n%s", got, logs)
		}
		return nil
	})
	if out := logs.String(); !contains(out, "AuthorizationPolicy.security.istio.io demo/unknown-field", `unknown field \"spec.rules[0].from[0].source.principal\"`) ||
		!contains(out, "DestinationRule", "not watched") {
		t.Fatalf("logs do not name the unknown field and the kinds not served:\n%s", out)
	}
	// The generations the model read, decoded or refused, for the status writer.
	const good, bad = "AuthorizationPolicy.security.istio.io demo/good", "AuthorizationPolicy.security.istio.io demo/unknown-field"
	if g := s.Generations(); len(g) != 2 || g[good] != 0 || g[bad] != 0 {
		t.Fatalf("generations %v, want %s and %s", g, good, bad)
	}
	if err := dyn.Resource(apGVR).Namespace("demo").Delete(ctx, "good", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 5*time.Second, "policy deleted", func() error {
		if got := authz(); len(got) != 0 {
			return fmt.Errorf("policies %q", got)
		}
		if g := s.Generations(); len(g) != 1 {
			return fmt.Errorf("generations %v after the delete, want %s only", g, bad)
		}
		return nil
	})
}
