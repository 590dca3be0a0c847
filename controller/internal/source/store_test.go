package source

import (
	"fmt"
	"strings"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/wait"
)

func labPod(name, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func TestStoreDebouncesAndNotifies(t *testing.T) {
	s, _ := newTestStore(t)
	sub := s.Subscribe()
	runStore(t, s)
	start := time.Now()
	for i := range 50 {
		s.Upsert(labPod(fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.0.%d", i+1)))
	}
	select {
	case <-sub:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("committed after %s, before the debounce interval", d)
	}
	if got := len(s.Index().For(model.Proxy{Kind: model.KindZtunnel})[configv1.WorkloadTypeURL]); got != 50 {
		t.Fatalf("%d workloads after one notification, want 50 (one commit)", got)
	}
	if gen := s.Index().Generation(); gen != 1 {
		t.Fatalf("generation %d, want 1 commit for the burst", gen)
	}
	// A change that changes no resource does not notify.
	s.Upsert(labPod("p0", "10.0.0.1"))
	select {
	case <-sub:
		t.Fatal("notified for a no-op change")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestStoreLogsInvalidObjectOnce(t *testing.T) {
	s, logs := newTestStore(t)
	bad := &secv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "bad"},
		Spec:       secv1.AuthorizationPolicySpec{Rules: []secv1.Rule{{To: []secv1.RuleTo{{Operation: secv1.Operation{Ports: []string{"x"}}}}}}},
	}
	for range 3 {
		s.Upsert(bad)
	}
	out := logs.String()
	if n := strings.Count(out, "invalid object"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, out)
	}
	if !contains(out, "AuthorizationPolicy demo/bad", "spec.rules[0].to[0].operation.ports[0]") {
		t.Fatalf("log does not name object and field:\n%s", out)
	}
}

func TestStoreSynced(t *testing.T) {
	s, _ := newTestStore(t)
	runStore(t, s)
	if s.Synced() {
		t.Fatal("synced before any source")
	}
	s.MarkSynced()
	wait.Until(t, 5*time.Second, "synced", synced(s))
}

func TestObjectName(t *testing.T) {
	tests := []struct {
		obj  interface{ GetName() string }
		want string
	}{
		{labPod("web", "10.0.0.1"), "Pod demo/web"},
		{&secv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "p"}}, "AuthorizationPolicy demo/p"},
		{&corev1.Namespace{TypeMeta: metav1.TypeMeta{Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, "Namespace /demo"},
	}
	for _, tt := range tests {
		if got := objectName(tt.obj.(runtime.Object)); got != tt.want {
			t.Errorf("objectName = %q, want %q", got, tt.want)
		}
	}
}
