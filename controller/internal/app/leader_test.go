package app

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

func TestElectorRunsTasksWhileLeading(t *testing.T) {
	kube := kubefake.NewClientset()
	m := newMetrics(prometheus.NewRegistry())
	started := make(chan struct{})
	stopped := make(chan struct{})
	task := func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		close(stopped)
		return nil
	}
	cfg, err := Config{LeaderElect: true, LeaseNamespace: "ambit-system", Identity: "replica-1"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	e, err := newElector(cfg, kube, slog.New(slog.NewTextHandler(io.Discard, nil)), m, []func(context.Context) error{task})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("leader task did not start")
	}
	if v := testutil.ToFloat64(m.leader); v != 1 {
		t.Fatalf("leader gauge %v, want 1", v)
	}
	lease, err := kube.CoordinationV1().Leases("ambit-system").Get(ctx, "ambit-controller", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "replica-1" {
		t.Fatalf("lease %v, %v", lease, err)
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("leader task did not stop")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.leader); v != 0 {
		t.Fatalf("leader gauge %v after stop, want 0", v)
	}
}
