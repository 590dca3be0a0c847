package app

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"ambit.dev/controller/internal/model"
)

// TestNodeHasIdentityScheduledPod: a node's ztunnel may get the certificate of a pod bound to
// it before the pod runs (captured at the CNI ADD, no IP in the API yet), and of no pod bound
// elsewhere, finished or being deleted.
func TestNodeHasIdentityScheduledPod(t *testing.T) {
	pod := func(name, sa, node string, phase corev1.PodPhase, deleted bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
			Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa},
			Status:     corev1.PodStatus{Phase: phase},
		}
		if deleted {
			now := metav1.NewTime(time.Now())
			p.DeletionTimestamp = &now
		}
		return p
	}
	idx, errs := model.Build(model.Options{TrustDomain: "cluster.local"}, []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}},
		pod("pending", "client", "node-a", corev1.PodPending, false),
		pod("done", "batch", "node-a", corev1.PodSucceeded, false),
		pod("going", "old", "node-a", corev1.PodPending, true),
		pod("elsewhere", "server", "node-b", corev1.PodPending, false),
		pod("defaulted", "", "node-a", corev1.PodPending, false),
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	id := func(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
	for _, tc := range []struct {
		node, id string
		want     bool
	}{
		{"node-a", "spiffe://cluster.local/ns/demo/sa/client", true},
		{"node-a", "spiffe://cluster.local/ns/demo/sa/default", true},
		{"node-b", "spiffe://cluster.local/ns/demo/sa/client", false},   // bound to node-a
		{"node-a", "spiffe://cluster.local/ns/demo/sa/server", false},   // bound to node-b
		{"node-a", "spiffe://cluster.local/ns/demo/sa/batch", false},    // finished
		{"node-a", "spiffe://cluster.local/ns/demo/sa/old", false},      // being deleted
		{"node-a", "spiffe://other.domain/ns/demo/sa/client", false},    // another trust domain
		{"node-a", "spiffe://cluster.local/ns/demo/sa/client/x", false}, // not a workload ID
		{"node-a", "spiffe://cluster.local/ns/other/sa/client", false},
		{"", "spiffe://cluster.local/ns/demo/sa/client", false},
	} {
		if got := nodeHasIdentity(idx, tc.node, id(tc.id)); got != tc.want {
			t.Errorf("node %q asks for %s: allowed %v, want %v", tc.node, tc.id, got, tc.want)
		}
	}
}
