package waypointexec

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
)

// fakeModel is the runner's view of the model: a list that the test changes.
type fakeModel struct {
	mu  sync.Mutex
	wps []*configv1.Waypoint
	ch  chan struct{}
}

func (m *fakeModel) set(wps ...*configv1.Waypoint) {
	m.mu.Lock()
	m.wps = wps
	m.mu.Unlock()
	select {
	case m.ch <- struct{}{}:
	default:
	}
}

func (m *fakeModel) get() []*configv1.Waypoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wps
}

func wp(ns, name string, f configv1.Waypoint_For, addr ...byte) *configv1.Waypoint {
	w := &configv1.Waypoint{Namespace: ns, Name: name, For: f}
	if len(addr) > 0 {
		w.Address = &configv1.NetworkAddress{Address: addr}
	}
	return w
}

// start runs a Runner whose command is a shell script appending its arguments, one run per
// line, to a file; it returns a function that reads the runs so far.
func start(t *testing.T, m *fakeModel, synced *atomic.Bool, script string, resync time.Duration) func() []string {
	t.Helper()
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	r := &Runner{
		Command:   []string{"sh", "-c", `echo "$*" >> "$0"; ` + script, runs},
		Waypoints: m.get, Synced: synced.Load, Updates: m.ch, Resync: resync,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return func() []string {
		b, _ := os.ReadFile(runs)
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
}

// waitRuns waits until the runs so far are ok, and returns them.
func waitRuns(t *testing.T, runs func() []string, what string, ok func([]string) bool) []string {
	t.Helper()
	var got []string
	wait.Until(t, 10*time.Second, what, func() error {
		if got = runs(); !ok(got) {
			return fmt.Errorf("runs so far %q", got)
		}
		return nil
	})
	return got
}

func TestRunnerRunsTheListOnChange(t *testing.T) {
	m := &fakeModel{ch: make(chan struct{}, 1)}
	m.set(wp("shop", "wp", configv1.Waypoint_SERVICEACCOUNT, 10, 0, 0, 9), wp("a", "ns-wp", configv1.Waypoint_NAMESPACE, 10, 0, 0, 8))
	var synced atomic.Bool
	runs := start(t, m, &synced, "", time.Hour)
	time.Sleep(300 * time.Millisecond)
	if got := runs(); len(got) != 1 || got[0] != "" {
		t.Fatalf("ran before the sources synced: %q (an empty list then would stop every waypoint)", got)
	}
	synced.Store(true)
	m.set(m.get()...)
	waitRuns(t, runs, "first run", func(r []string) bool { return len(r) == 1 && r[0] == "shop/wp=serviceaccount a/ns-wp=namespace" })

	// The same list, kicked again: nothing to do (the resync is an hour away).
	m.set(m.get()...)
	time.Sleep(200 * time.Millisecond)
	if got := runs(); len(got) != 1 {
		t.Fatalf("an unchanged list ran again: %q", got)
	}
	// A waypoint that lost its address is run again (the command writes it back).
	m.set(wp("shop", "wp", configv1.Waypoint_SERVICEACCOUNT), wp("a", "ns-wp", configv1.Waypoint_NAMESPACE, 10, 0, 0, 8))
	waitRuns(t, runs, "run after an address was lost", func(r []string) bool { return len(r) == 2 })
	// Removing one runs the shorter list.
	m.set(wp("a", "ns-wp", configv1.Waypoint_NAMESPACE, 10, 0, 0, 8))
	got := waitRuns(t, runs, "run after a Gateway was removed", func(r []string) bool { return len(r) == 3 })
	if got[2] != "a/ns-wp=namespace" {
		t.Fatalf("third run %q, want only a/ns-wp=namespace", got[2])
	}
	// None left: the command still runs, with no waypoint, to stop the last one.
	m.set()
	got = waitRuns(t, runs, "run with no waypoint", func(r []string) bool { return len(r) == 4 })
	if got[3] != "" {
		t.Fatalf("fourth run %q, want no arguments", got[3])
	}
}

func TestRunnerResyncs(t *testing.T) {
	m := &fakeModel{ch: make(chan struct{}, 1)}
	m.set(wp("shop", "wp", configv1.Waypoint_SERVICE, 10, 0, 0, 9))
	var synced atomic.Bool
	synced.Store(true)
	runs := start(t, m, &synced, "", 100*time.Millisecond)
	waitRuns(t, runs, "runs every resync period with an unchanged list", func(r []string) bool { return len(r) >= 4 })
}

func TestRunnerRetriesAFailedCommand(t *testing.T) {
	m := &fakeModel{ch: make(chan struct{}, 1)}
	m.set(wp("shop", "wp", configv1.Waypoint_SERVICE, 10, 0, 0, 9))
	var synced atomic.Bool
	synced.Store(true)
	// Fails on its first two runs, then succeeds: backoff 1 s, then 2 s.
	marker := filepath.Join(t.TempDir(), "n")
	script := fmt.Sprintf(`n=$(cat %[1]s 2>/dev/null || echo 0); echo $((n+1)) > %[1]s; [ $n -ge 2 ]`, marker)
	t0 := time.Now()
	runs := start(t, m, &synced, script, time.Hour)
	waitRuns(t, runs, "three runs, the last one succeeding", func(r []string) bool { return len(r) == 3 })
	if d := time.Since(t0); d < 2*time.Second {
		t.Fatalf("three runs within %v: the failures were retried without backoff", d)
	}
	time.Sleep(300 * time.Millisecond)
	if got := runs(); len(got) != 3 {
		t.Fatalf("ran again after success with an unchanged list: %d runs", len(got))
	}
}

func TestArgs(t *testing.T) {
	got := Args([]*configv1.Waypoint{wp("ns", "a", configv1.Waypoint_SERVICEACCOUNT), wp("ns", "b", configv1.Waypoint_SERVICE), wp("x", "c", configv1.Waypoint_NAMESPACE)})
	want := "ns/a=serviceaccount ns/b=service x/c=namespace"
	if strings.Join(got, " ") != want {
		t.Fatalf("Args = %q, want %q", got, want)
	}
	if r := (&Runner{}).Run(t.Context()); r == nil {
		t.Fatal("a Runner without a command ran")
	}
}
