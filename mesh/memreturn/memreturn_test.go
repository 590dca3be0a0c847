package memreturn

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
)

func TestObserve(t *testing.T) {
	var w Watcher
	steps := []struct {
		alloc uint64
		want  bool
	}{
		{0, false}, // quiet, but no burst yet: nothing to give back
		{0, false},
		{0, false},
		{BurstAlloc, false},
		{QuietAlloc - 1, false}, // one quiet interval is not enough
		{QuietAlloc, false},     // between the thresholds: the load goes on, the count restarts
		{QuietAlloc - 1, false},
		{QuietAlloc - 1, true}, // QuietAfter in a row after the burst
		{0, false},             // once per burst
		{0, false},
		{0, false},
		{2 * BurstAlloc, false},
		{0, false},
		{BurstAlloc, false}, // the burst goes on: the quiet count restarts
		{0, false},
	}
	for i, s := range steps {
		if got := w.Observe(s.alloc); got != s.want {
			t.Fatalf("step %d: Observe(%d) = %v, want %v", i, s.alloc, got, s.want)
		}
	}
	// Quiet after a burst, but too soon after the last give-back: it waits until Spacing
	// intervals have passed since then, and gives back once.
	gaveAt := len(steps) - 8 // the step that returned true
	for i := len(steps); i < gaveAt+Spacing; i++ {
		if w.Observe(0) {
			t.Fatalf("interval %d: gave back %d intervals after the last time", i, i-gaveAt)
		}
	}
	if !w.Observe(0) {
		t.Fatalf("no give-back %d intervals after the last one, with a burst since", Spacing)
	}
	for range 3 * Spacing {
		if w.Observe(0) {
			t.Fatal("gave back again with no burst since")
		}
	}
}

func TestSettled(t *testing.T) {
	// Quiet at once: the interval of the news gives back.
	var w Watcher
	w.Settled()
	if !w.Observe(0) {
		t.Fatal("one-off work over, a quiet interval, nothing given back yet: no give-back")
	}
	for i := range 2 * Spacing {
		if w.Observe(0) {
			t.Fatalf("interval %d: gave back again with nothing since", i)
		}
	}

	// Busy after the news (a config push, a wave of handshakes): the first quiet interval
	// gives back.
	w = Watcher{}
	w.Settled()
	for i := 1; i < SettleWait-1; i++ {
		if w.Observe(QuietAlloc) {
			t.Fatalf("gave back in busy interval %d after one-off work", i)
		}
		if i == 2 {
			w.Settled() // more one-off work meanwhile waits with it, not from scratch
		}
	}
	if !w.Observe(QuietAlloc - 1) {
		t.Fatal("no give-back at the first quiet interval after one-off work")
	}

	// Busy for good: the SettleWait-th interval gives back anyway.
	w = Watcher{}
	w.Settled()
	for i := 1; i < SettleWait; i++ {
		if w.Observe(BurstAlloc) {
			t.Fatalf("gave back in busy interval %d after one-off work", i)
		}
	}
	if !w.Observe(BurstAlloc) {
		t.Fatalf("no give-back %d busy intervals after one-off work", SettleWait)
	}

	// Within SettleSpacing of the last give-back: put off until then, not dropped, and
	// once only for all the work held.
	w = Watcher{}
	w.Settled()
	w.Observe(0)
	for i := 1; i < SettleSpacing; i++ {
		w.Settled()
		if w.Observe(0) {
			t.Fatalf("gave back again for one-off work %d intervals after the last give-back", i)
		}
	}
	if !w.Observe(0) {
		t.Fatalf("no give-back %d intervals after the last one, with one-off work over since", SettleSpacing)
	}
	for i := range 2 * Spacing {
		if w.Observe(0) {
			t.Fatalf("interval %d: gave back again with nothing since", i)
		}
	}

	// A burst after a give-back for one-off work waits the full Spacing from it.
	w = Watcher{}
	w.Settled()
	w.Observe(0)
	w.Observe(BurstAlloc)
	for i := 1; i < Spacing-1; i++ {
		if w.Observe(0) {
			t.Fatalf("interval %d after a give-back: gave back for a burst before Spacing", i)
		}
	}
	if !w.Observe(0) {
		t.Fatalf("no give-back for a burst %d intervals after the last one", Spacing)
	}
}

func TestRunGivesBackWhenSettled(t *testing.T) {
	gave := startRun(t, 20*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	if n := gave.Load(); n != 0 {
		t.Fatalf("%d give-backs with nothing done", n)
	}
	Settle()
	wait.Until(t, 5*time.Second, "a give-back after Settle", func() error {
		if gave.Load() == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	if n := gave.Load(); n != 1 {
		t.Fatalf("%d give-backs after one Settle", n)
	}
}

func TestSettleWhenReady(t *testing.T) {
	settled.Store(false)
	calls := 0
	SettleWhenReady(t.Context(), func() error {
		if calls++; calls < 3 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if calls != 3 || !settled.Swap(false) {
		t.Fatalf("after %d readiness checks (ready at the third): settled %v", calls, settled.Load())
	}
	// Never ready: nothing settles, and it returns when its context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 3*ReadyPoll)
	defer cancel()
	SettleWhenReady(ctx, func() error { return fmt.Errorf("never") })
	if settled.Load() {
		t.Fatal("settled though never ready")
	}
}

// startRun runs the watcher every interval until the test ends and counts its give-backs.
func startRun(t *testing.T, every time.Duration) *atomic.Int32 {
	t.Helper()
	gave := new(atomic.Int32)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { run(ctx, every, func(uint64, uint64) { gave.Add(1) }); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return gave
}

// garbage keeps what the tests allocate reachable until they let it go.
var garbage [][]byte

func TestGiveBack(t *testing.T) {
	for range 32 << 10 {
		garbage = append(garbage, make([]byte, 1<<10))
	}
	var pool sync.Pool
	for range 8 {
		b := make([]byte, 1<<20)
		pool.Put(&b)
	}
	garbage = nil
	before, after := GiveBack()
	t.Logf("held %d MiB before, %d MiB after", before>>20, after>>20)
	if before < 32<<20 {
		t.Fatalf("held %d bytes before with 32 MiB live: the reading is wrong", before)
	}
	// 32 MiB of dead objects and 8 MiB in a pool came back.
	if after+32<<20 > before {
		t.Fatalf("held %d bytes after, %d before: not given back", after, before)
	}
	if got := Held(); got > after+8<<20 {
		t.Fatalf("held %d bytes right after giving back %d", got, after)
	}
}

func TestRunGivesBackAfterBurst(t *testing.T) {
	gave := startRun(t, 50*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	if n := gave.Load(); n != 0 {
		t.Fatalf("%d give-backs with no burst", n)
	}
	for range 16 << 10 {
		garbage = append(garbage, make([]byte, 1<<10))
	}
	garbage = nil
	held := Held()
	wait.Until(t, 5*time.Second, "a give-back after a 16 MiB burst", func() error {
		if gave.Load() == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	if now := Held(); now+8<<20 > held {
		t.Fatalf("held %d bytes after the give-back, %d before", now, held)
	}
	// once per burst
	time.Sleep(300 * time.Millisecond)
	if n := gave.Load(); n != 1 {
		t.Fatalf("%d give-backs after one burst", n)
	}
}
