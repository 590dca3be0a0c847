package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// elector runs leader election on a Lease. Every replica serves config and certificates
// (they only read the API); only the leader runs the LeaderTasks (writes, such as status).
// Losing the Lease stops the tasks and the replica campaigns again.
type elector struct {
	cfg   leaderelection.LeaderElectionConfig
	log   *slog.Logger
	m     *metrics
	tasks []func(context.Context) error
}

func newElector(c Config, kube kubernetes.Interface, log *slog.Logger, m *metrics, tasks []func(context.Context) error) (*elector, error) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.LeaseNamespace, Name: c.LeaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: c.Identity},
	}
	e := &elector{log: log, m: m, tasks: tasks}
	e.cfg = leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            c.LeaseName,
	}
	check := e.cfg // validated now, so a bad setting fails at start; Run sets the callbacks
	check.Callbacks = leaderelection.LeaderCallbacks{OnStartedLeading: func(context.Context) {}, OnStoppedLeading: func() {}}
	if _, err := leaderelection.NewLeaderElector(check); err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	return e, nil
}

// Run campaigns until ctx ends.
func (e *elector) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		cfg := e.cfg
		var wg sync.WaitGroup
		cfg.Callbacks = leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				e.log.Info("leading")
				e.m.leader.Set(1)
				for _, t := range e.tasks {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := t(ctx); err != nil {
							e.log.Error("leader task failed", "error", err)
						}
					}()
				}
			},
			OnStoppedLeading: func() {
				e.m.leader.Set(0)
				e.log.Info("not leading")
			},
		}
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		le.Run(ctx) // returns when ctx ends or the lease is lost
		wg.Wait()
	}
	return nil
}
