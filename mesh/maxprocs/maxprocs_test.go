package maxprocs

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"runtime"
	"testing"
	"time"
)

func TestObserve(t *testing.T) {
	g := &Governor{N: 1, Max: 3}
	const spare = 4.0 // idle cores on the node
	steps := []struct {
		busy, idle float64
		want       int
	}{
		{0.9, spare, 1}, // one busy sample is not enough
		{0.5, spare, 1}, // and the run is broken
		{0.85, spare, 1},
		{0.95, 0.5, 1}, // busy, but no core free to run a second processor
		{0.95, spare, 1},
		{0.95, spare, 2}, // two in a row with a core free: one more processor
		{1.5, spare, 2},  // 1.5 < 0.8×2
		{1.7, spare, 2},
		{1.9, spare, 3},
		{2.9, spare, 3}, // at Max: no higher
		{2.9, spare, 3},
	}
	for i, s := range steps {
		if got := g.Observe(s.busy, s.idle); got != s.want {
			t.Fatalf("step %d: Observe(%v, %v) = %d, want %d", i, s.busy, s.idle, got, s.want)
		}
	}
	// Down only after DownAfter samples in a row at or under DownShare of N-1 processors.
	for i := range DownAfter - 1 {
		if got := g.Observe(1.0, spare); got != 3 {
			t.Fatalf("down sample %d: %d, want 3", i, got)
		}
	}
	if got := g.Observe(1.2, spare); got != 3 { // over 0.5×2: the run is broken
		t.Fatalf("after a busier sample: %d, want 3", got)
	}
	for range DownAfter - 1 {
		g.Observe(0.3, spare)
	}
	if got := g.Observe(0.3, spare); got != 2 {
		t.Fatalf("after %d quiet samples: %d, want 2", DownAfter, got)
	}
	// Busy, but the node has no idle core: the extra processor only adds hand-offs.
	for range DownAfter {
		g.Observe(1.8, 0.1)
	}
	if g.N != 1 {
		t.Fatalf("after a spell on a saturated node at 2: %d, want 1", g.N)
	}
	for range 3 * DownAfter {
		g.Observe(0, spare)
	}
	if g.N != 1 {
		t.Fatalf("idle at 1: %d, want to stay at 1", g.N)
	}
}

func TestObserveMaxOne(t *testing.T) {
	g := &Governor{N: 1, Max: 1}
	for range 5 {
		if got := g.Observe(1.0, 8); got != 1 {
			t.Fatalf("Max 1: Observe = %d", got)
		}
	}
}

func TestParseIdle(t *testing.T) {
	stat := "cpu  2255 34 2290 22625563 6290 127 456 0 0 0\ncpu0 1132 34 1441 11311718 3675 127 438 0 0 0\n"
	if got, want := parseIdle([]byte(stat)), (22625563+6290)*10*time.Millisecond; got != want {
		t.Fatalf("parseIdle = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "cpu 1 2 3\n", "intr 1 2 3 4 5 6\n", "cpu 1 2 3 x 5 6\n"} {
		if got := parseIdle([]byte(bad)); got != 0 {
			t.Errorf("parseIdle(%q) = %v, want 0", bad, got)
		}
	}
	if idleTime() <= 0 {
		t.Error("idleTime of this machine: not positive")
	}
}

func TestStart(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := Start(ctx, -1, log); err == nil {
		t.Fatal("Start(-1): no error")
	}
	if err := Start(ctx, 3, log); err != nil || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("Start(3): err %v, GOMAXPROCS %d", err, runtime.GOMAXPROCS(0))
	}
	t.Setenv("GOMAXPROCS", "2")
	runtime.GOMAXPROCS(2) // what the runtime would have read
	if err := Start(ctx, 0, log); err != nil || runtime.GOMAXPROCS(0) != 2 {
		t.Fatalf("auto with GOMAXPROCS=2 set: err %v, GOMAXPROCS %d, want it kept", err, runtime.GOMAXPROCS(0))
	}
	if err := os.Unsetenv("GOMAXPROCS"); err != nil {
		t.Fatal(err)
	}
	runtime.GOMAXPROCS(4)
	if err := Start(ctx, 0, log); err != nil || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("auto: err %v, GOMAXPROCS %d, want 1", err, runtime.GOMAXPROCS(0))
	}
}

// TestStep: a decision reaches the runtime and the log; a sample that changes nothing
// writes nothing.
func TestStep(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	g := &Governor{N: 1, Max: 2}
	g.step(0.9, 1.5, log)
	if runtime.GOMAXPROCS(0) != 1 || out.Len() != 0 {
		t.Fatalf("after one busy sample: GOMAXPROCS %d, log %q", runtime.GOMAXPROCS(0), out.String())
	}
	g.step(0.95, 1.5, log)
	if runtime.GOMAXPROCS(0) != 2 || !bytes.Contains(out.Bytes(), []byte(`msg="workers changed" workers=2 was=1 busy_cores=0.95 node_idle_cores=1.50`)) {
		t.Fatalf("after two: GOMAXPROCS %d, log %q", runtime.GOMAXPROCS(0), out.String())
	}
	for range DownAfter {
		g.step(0.2, 1.5, log)
	}
	if runtime.GOMAXPROCS(0) != 1 || !bytes.Contains(out.Bytes(), []byte("workers=1 was=2")) {
		t.Fatalf("after a quiet spell: GOMAXPROCS %d, log %q", runtime.GOMAXPROCS(0), out.String())
	}
}
