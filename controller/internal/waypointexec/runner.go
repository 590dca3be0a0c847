// Package waypointexec runs the waypoints that the controller's model asks for by running a
// command with the complete list, the local mode's counterpart of the Deployment a waypoint
// gets in Kubernetes. The lab starts the controller with
//
//	--waypoint-exec "ambitctl lab waypoints-sync --dir <lab>"
//
// and that command makes the lab's waypoint pods exactly the list: it starts the missing ones,
// restarts the dead ones, stops those whose Gateway is gone, and records each pod's address in
// its Gateway's status. The command is idempotent; the runner calls it whenever the list
// changes (a Gateway added, removed or changed kind, or one that lost its address), and every
// Resync period so that a waypoint that died comes back, as a kubelet restarts a container.
package waypointexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
)

// Runner runs Command with the waypoints of Waypoints appended as arguments, one
// "<namespace>/<name>=<for>" each (for: serviceaccount, service or namespace).
type Runner struct {
	// Command is the program and its first arguments.
	Command []string
	// Waypoints returns the waypoints to run (model.Index.Waypoints); Synced says whether
	// the sources have loaded: before that an empty list would stop every waypoint.
	Waypoints func() []*configv1.Waypoint
	Synced    func() bool
	// Updates receives a value after each change of the model.
	Updates <-chan struct{}
	// Resync re-runs the command this often with an unchanged list; default 10 s.
	Resync time.Duration
	// Timeout bounds one run of the command; default 2 minutes.
	Timeout time.Duration
	Log     *slog.Logger
}

const maxBackoff = 30 * time.Second

// Args returns the arguments for wps: "<namespace>/<name>=<for>" each, in order.
func Args(wps []*configv1.Waypoint) []string {
	out := make([]string, 0, len(wps))
	for _, wp := range wps {
		out = append(out, wp.GetNamespace()+"/"+wp.GetName()+"="+strings.ToLower(wp.GetFor().String()))
	}
	return out
}

// state is what a run must see again before it is skipped: the arguments and which
// waypoints have an address.
func state(wps []*configv1.Waypoint) string {
	var b strings.Builder
	for i, a := range Args(wps) {
		b.WriteString(a)
		if len(wps[i].GetAddress().GetAddress()) == 0 {
			b.WriteString(" (no address)")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Run calls the command until ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	if len(r.Command) == 0 {
		return errors.New("waypoint exec: no command")
	}
	resync := r.Resync
	if resync <= 0 {
		resync = 10 * time.Second
	}
	var (
		done     string // state of the last successful run
		lastRun  time.Time
		failures int
		next     = time.Now() // no run before this (backoff after a failure)
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.Updates:
		case <-timer.C:
		}
		now := time.Now()
		if r.Synced != nil && !r.Synced() {
			timer.Reset(100 * time.Millisecond)
			continue
		}
		wps := r.Waypoints()
		st := state(wps)
		due := st != done || now.Sub(lastRun) >= resync
		if !due || now.Before(next) {
			wait := resync - now.Sub(lastRun)
			if now.Before(next) {
				wait = next.Sub(now)
			}
			timer.Reset(max(wait, 10*time.Millisecond))
			continue
		}
		lastRun = now
		if err := r.run(ctx, Args(wps)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			backoff := min(time.Second<<min(failures-1, 5), maxBackoff)
			next = time.Now().Add(backoff)
			done = ""
			r.Log.Error("waypoint command failed; retrying", "waypoints", len(wps), "retry_in", backoff, "error", err)
			timer.Reset(backoff)
			continue
		}
		failures, done, next = 0, st, time.Time{}
		timer.Reset(resync)
	}
}

func (r *Runner) run(ctx context.Context, args []string) error {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.Command[0], append(r.Command[1:len(r.Command):len(r.Command)], args...)...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	for line := range strings.Lines(out.String()) {
		if line = strings.TrimSpace(line); line != "" {
			r.Log.Info(line)
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(r.Command, " "), err)
	}
	return nil
}
