package inpod

import (
	"context"
	"time"
)

// Run brings the pods back once the first config is in (Synced), so that they are captured
// with the right identity rather than left waiting: from the predecessor when a Handover
// found one, else from the records on disk. Then, until ctx ends, it reconciles the pods
// after every config change and checks their capture rules every CaptureCheck, which finds
// rules changed behind ztunnel's back, and pods whose network namespace went without a
// removal, between config changes.
func (m *Manager) Run(ctx context.Context) error {
	reconcile := make(chan struct{}, 1)
	m.state.OnChange(func() {
		select {
		case reconcile <- struct{}{}:
		default:
		}
	})
	for m.Synced != nil && !m.Synced() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	if h := m.handover; h != nil && h.predecessor {
		if err := h.takeOver(ctx); err != nil {
			return err
		}
	} else if err := m.Restore(ctx); err != nil {
		m.log.Warn("restore pods", "err", err)
	}
	var check <-chan time.Time
	if m.CaptureCheck > 0 {
		t := time.NewTicker(m.CaptureCheck)
		defer t.Stop()
		check = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconcile:
			m.Reconcile(ctx)
		case <-check:
			m.CheckCapture(ctx)
		}
	}
}
