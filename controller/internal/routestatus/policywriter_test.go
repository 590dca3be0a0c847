package routestatus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"ambit.dev/controller/internal/kubetest"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
	"ambit.dev/mesh/wait"
)

// statusWrites counts the requests that write a status subresource, by path.
type statusWrites struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *statusWrites) RoundTrip(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/status") {
			s.mu.Lock()
			s.n[r.URL.Path]++
			s.mu.Unlock()
		}
		return rt.RoundTrip(r)
	})
}

func (s *statusWrites) of(gvr schema.GroupVersionResource, name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[fmt.Sprintf("/apis/%s/%s/namespaces/demo/%s/%s/status", gvr.Group, gvr.Version, gvr.Resource, name)]
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestPolicyStatusRealAPIServer runs the Writer, with the Kubernetes source and the Store that
// give the model's verdicts, against a real kube-apiserver with Istio's CRDs (status
// subresource and all): a valid VirtualService and its DestinationRule get Accepted and
// ResolvedRefs True; a VirtualService whose subset no DestinationRule defines gets
// ResolvedRefs False naming the field; one with a field Istio does not have, refused at
// decode, gets Accepted False naming it; an Istio AuthorizationPolicy with a rule that fails
// closed gets PartiallyInvalid; PeerAuthentications, Istio's and ambit's, and ambit's
// AuthorizationPolicy get Accepted, or Invalid naming the field. Fixing the resources flips the conditions (lastTransitionTime with them), each
// generation's status is written once, and nothing is written when nothing changed.
func TestPolicyStatusRealAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const crds = "controller/e2e/testdata/istio-crds.yaml"
	if err := c.Apply(ctx, crds); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"reviews", "ratings"} {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}}
		if _, err := c.Client.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	gw, err := gatewayclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := source.NewStore(model.NewIndex(model.Options{}), log, source.StoreOptions{})
	kube := source.NewKube(source.KubeClients{Kube: c.Client, Gateway: gw, Dynamic: c.Dynamic}, store, log, 0)
	writes := &statusWrites{n: map[string]int{}}
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(writes.RoundTrip)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &Writer{Kube: c.Client, Gateway: gw, Dynamic: dyn, Verdicts: store, Domain: "cluster.local", Log: log}
	rctx, rcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{store.Run, kube.Run, w.Run} {
		wg.Go(func() {
			if err := run(rctx); err != nil {
				t.Error(err)
			}
		})
	}
	defer func() {
		rcancel()
		wg.Wait()
	}()

	if err := c.ApplyYAML(ctx, []byte(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: demo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: demo}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings, subset: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: demo}
spec:
  hosts: [typo.example.com]
  http:
  - timout: 5s
    route:
    - destination: {host: reviews}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: demo}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/web]}}]
  - from: [{source: {requestPrincipals: ["issuer/*"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bogus, namespace: demo}
spec:
  mtls: {mode: BOGUS}
---
apiVersion: security.ambit.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web, namespace: demo}
spec:
  rules:
  - to: [{operation: {ports: ["8080"]}}]
---
apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-port, namespace: demo}
spec:
  rules:
  - to: [{operation: {ports: ["http"]}}]
`)); err != nil {
		t.Fatal(err)
	}
	istio := source.IstioResources(c.Client.Discovery())
	vsGVR, drGVR, apGVR, paGVR := istio["VirtualService"], istio["DestinationRule"], istio["AuthorizationPolicy"], istio["PeerAuthentication"]
	type want struct {
		accepted, resolved metav1.ConditionStatus // resolved "": no ResolvedRefs condition
		reason, msg        string                 // Accepted's reason, and a part of a message
	}
	get := func(gvr schema.GroupVersionResource, name string) (map[string]metav1.Condition, int64, error) {
		u, err := c.Dynamic.Resource(gvr).Namespace("demo").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, 0, err
		}
		ours, _, observed := readStatus(u)
		out := map[string]metav1.Condition{}
		for _, c := range ours {
			if c.ObservedGeneration != u.GetGeneration() {
				return nil, 0, fmt.Errorf("condition %s of generation %d, the object's is %d", c.Type, c.ObservedGeneration, u.GetGeneration())
			}
			out[c.Type] = c
		}
		if observed != u.GetGeneration() {
			return nil, 0, fmt.Errorf("observedGeneration %d, want %d", observed, u.GetGeneration())
		}
		return out, u.GetGeneration(), nil
	}
	expect := func(gvr schema.GroupVersionResource, name string, wt want) map[string]metav1.Condition {
		t.Helper()
		var got map[string]metav1.Condition
		wait.Until(t, 30*time.Second, fmt.Sprintf("%s %s: %+v", gvr.Resource, name, wt), func() error {
			c, _, err := get(gvr, name)
			if err != nil {
				return err
			}
			a, r := c[Accepted], c[ResolvedRefs]
			if a.Status != wt.accepted || a.Reason != wt.reason || r.Status != wt.resolved ||
				(wt.msg != "" && !strings.Contains(a.Message, wt.msg) && !strings.Contains(r.Message, wt.msg)) {
				return fmt.Errorf("Accepted %s %s %q, ResolvedRefs %s %s %q", a.Status, a.Reason, a.Message, r.Status, r.Reason, r.Message)
			}
			got = c
			return nil
		})
		return got
	}
	expect(vsGVR, "reviews", want{"True", "True", ReasonAccepted, ""})
	expect(drGVR, "reviews", want{"True", "True", ReasonAccepted, ""})
	ratings := expect(vsGVR, "ratings", want{"False", "False", ReasonUnresolvedRefs, "spec.http[0].route[0].destination.subset"})
	if r := ratings[ResolvedRefs]; r.Reason != ReasonRefNotFound || !strings.Contains(r.Message, `"v2" is not a subset`) {
		t.Errorf("ResolvedRefs of the VirtualService with an unknown subset: %+v", r)
	}
	expect(vsGVR, "typo", want{"False", "True", ReasonInvalid, `unknown field "spec.http[0].timout"`})
	jwt := expect(apGVR, "jwt", want{"True", "", ReasonPartiallyInvalid, "spec.rules[1].from[0].source.requestPrincipals"})
	if _, ok := jwt[ResolvedRefs]; ok {
		t.Errorf("an AuthorizationPolicy has no references, yet ResolvedRefs: %+v", jwt)
	}
	expect(paGVR, "strict", want{"True", "", ReasonAccepted, ""})
	expect(paGVR, "bogus", want{"False", "", ReasonInvalid, "spec.mtls.mode"})
	expect(source.PeerAuthenticationGVR, "strict", want{"True", "", ReasonAccepted, ""})
	expect(source.AuthorizationPolicyGVR, "web", want{"True", "", ReasonAccepted, ""})
	expect(source.AuthorizationPolicyGVR, "bad-port", want{"False", "", ReasonInvalid, "spec.rules[0].to[0].operation.ports[0]"})

	// Nothing changed: nothing written. A Service created (which wakes the writer for the
	// VirtualServices and DestinationRules of the namespace) and a new VirtualService (a
	// commit, which wakes it for every policy) change no verdict of the others.
	before := writes.of(vsGVR, "reviews")
	if before == 0 {
		t.Fatal("the VirtualService's status written without a request counted")
	}
	beforeDR := writes.of(drGVR, "reviews")
	if _, err := c.Client.CoreV1().Services("demo").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "details"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9080}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyYAML(ctx, []byte(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: demo}
spec:
  hosts: [details]
  http:
  - route:
    - destination: {host: details}
`)); err != nil {
		t.Fatal(err)
	}
	expect(vsGVR, "details", want{"True", "True", ReasonAccepted, ""})
	time.Sleep(time.Second) // room for a needless write to show
	if n, m := writes.of(vsGVR, "reviews"), writes.of(drGVR, "reviews"); n != before || m != beforeDR {
		t.Errorf("unchanged objects written again: VirtualService %d → %d, DestinationRule %d → %d", before, n, beforeDR, m)
	}

	// Fixes flip the conditions: the subset defined, the field spelled right, the port a number.
	if err := c.ApplyYAML(ctx, []byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: demo}
spec:
  host: ratings
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: demo}
spec:
  hosts: [typo.example.com]
  http:
  - timeout: 5s
    route:
    - destination: {host: reviews}
---
apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-port, namespace: demo}
spec:
  rules:
  - to: [{operation: {ports: ["8080"]}}]
`)); err != nil {
		t.Fatal(err)
	}
	fixed := expect(vsGVR, "ratings", want{"True", "True", ReasonAccepted, ""})
	if a, was := fixed[Accepted], ratings[Accepted]; a.LastTransitionTime.Before(&was.LastTransitionTime) {
		t.Errorf("Accepted flipped, yet lastTransitionTime %v is before the last %v", a.LastTransitionTime, was.LastTransitionTime)
	}
	expect(vsGVR, "typo", want{"True", "True", ReasonAccepted, ""})
	// The new generation's status is written once, when the model has read it: never the
	// last generation's verdict under the new generation's number first.
	time.Sleep(500 * time.Millisecond)
	if n := writes.of(vsGVR, "typo"); n != 2 {
		t.Errorf("the VirtualService fixed: its status written %d times in all, want 2 (refused, then accepted)", n)
	}
	expect(source.AuthorizationPolicyGVR, "bad-port", want{"True", "", ReasonAccepted, ""})
	// A DestinationRule for a Service that does not exist: ResolvedRefs names the host.
	if err := c.ApplyYAML(ctx, []byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: gone, namespace: demo}
spec:
  host: gone
`)); err != nil {
		t.Fatal(err)
	}
	expect(drGVR, "gone", want{"True", "False", ReasonAccepted, "spec.host: Service demo/gone"})
}
