package lab

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// RestartZtunnel replaces the ztunnel of node in the lab recorded in o.Dir the way a
// DaemonSet rolling update with surge does: a new ztunnel starts beside the old one, takes
// its pods over (SO_REUSEPORT hand-over), and once it is ready the old one gets SIGTERM and
// drains. Connections keep working throughout. afterHandover, when set, runs once the new
// ztunnel holds the pods and before the old one is told to stop.
func RestartZtunnel(ctx context.Context, o Options, node string, afterHandover func() error) (*NodeState, error) {
	if err := o.complete(); err != nil {
		return nil, err
	}
	old, next, err := startSuccessor(ctx, o, node)
	if err != nil {
		return nil, err
	}
	if afterHandover != nil {
		if err := afterHandover(); err != nil {
			return nil, err
		}
	}
	if alive(old.PID) {
		_ = syscall.Kill(old.PID, syscall.SIGTERM)
	}
	// The old one drains for its drain period (5 s by default), then exits.
	if err := waitFor(ctx, 30*time.Second, "old ztunnel "+node+" to exit", func() error {
		if alive(old.PID) {
			return fmt.Errorf("pid %d still runs", old.PID)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	o.printf("ztunnel %s replaced: pid %d handed over to pid %d", node, old.PID, next.Ztunnel.PID)
	return &next, nil
}

// startSuccessor starts the new ztunnel of node and records it, under the state lock.
func startSuccessor(ctx context.Context, o Options, node string) (old ProcState, next NodeState, err error) {
	unlock, err := lockState(o.Dir)
	if err != nil {
		return old, next, err
	}
	defer unlock()
	st, err := LoadState(o.Dir)
	if err != nil {
		return old, next, err
	}
	n := st.node(node)
	if n == nil {
		return old, next, fmt.Errorf("lab %q has no node %q", st.Name, node)
	}
	old, next = n.Ztunnel, *n
	if err := StartZtunnel(ctx, o, st, &next); err != nil {
		return old, next, fmt.Errorf("new ztunnel for %s: %w", node, err)
	}
	*n = next
	return old, next, st.save(o.Dir)
}
