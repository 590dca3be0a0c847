package wait

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeT records Fatalf and, like testing.T, ends the goroutine that called it.
type fakeT struct {
	testing.TB
	fatal string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls Until with a fake t on a goroutine of its own, as the testing package runs a
// test, and returns what it reported and whether Until returned.
func run(timeout time.Duration, what string, cond func() error) (fatal string, returned bool) {
	f := &fakeT{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Until(f, timeout, what, cond)
		returned = true
	}()
	<-done
	return f.fatal, returned
}

func TestUntilReturnsOnceCondHolds(t *testing.T) {
	var calls atomic.Int32
	fatal, returned := run(5*time.Second, "the third call", func() error {
		if calls.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if fatal != "" || !returned || calls.Load() != 3 {
		t.Fatalf("Until: fatal %q, returned %v after %d calls; want a return after 3 calls", fatal, returned, calls.Load())
	}
}

func TestUntilFailsWithTheLastError(t *testing.T) {
	var calls atomic.Int32
	start := time.Now()
	fatal, returned := run(50*time.Millisecond, "the pod to be captured", func() error {
		return fmt.Errorf("state %d", calls.Add(1))
	})
	if returned {
		t.Fatal("Until returned after its timeout; want the test failed and stopped")
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("Until gave up after %v, before its 50ms timeout", d)
	}
	want := fmt.Sprintf("the pod to be captured: state %d", calls.Load())
	if !strings.Contains(fatal, "timed out after 50ms") || !strings.HasSuffix(fatal, want) {
		t.Fatalf("Until reported %q; want the timeout and the last error, %q", fatal, want)
	}
}

// A zero timeout still asks once: a condition that already holds passes.
func TestUntilZeroTimeout(t *testing.T) {
	if fatal, returned := run(0, "x", func() error { return nil }); fatal != "" || !returned {
		t.Fatalf("cond holding at once, zero timeout: fatal %q, returned %v", fatal, returned)
	}
	if fatal, returned := run(0, "x", func() error { return errors.New("no") }); returned || !strings.HasSuffix(fatal, "x: no") {
		t.Fatalf("cond never holding, zero timeout: fatal %q, returned %v", fatal, returned)
	}
}
