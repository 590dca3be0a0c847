package hbone

import (
	"testing"
	"time"
)

func deadlinePassed(d *deadline) bool {
	select {
	case <-d.wait():
		return true
	default:
		return false
	}
}

// waitPassed reports whether d passes within limit.
func waitPassed(d *deadline, limit time.Duration) bool {
	select {
	case <-d.wait():
		return true
	case <-time.After(limit):
		return false
	}
}

func TestDeadline(t *testing.T) {
	d := newDeadline()
	if deadlinePassed(d) {
		t.Fatal("a new deadline has passed")
	}
	d.set(time.Now().Add(-time.Second))
	if !deadlinePassed(d) {
		t.Fatal("a past deadline has not passed")
	}
	d.set(time.Time{})
	if deadlinePassed(d) {
		t.Fatal("a disarmed deadline still counts as passed")
	}

	// Re-armed later, then earlier: only the last setting counts.
	d.set(time.Now().Add(20 * time.Millisecond))
	d.set(time.Now().Add(time.Hour))
	if waitPassed(d, 100*time.Millisecond) {
		t.Fatal("a deadline moved an hour ahead fired at its earlier time")
	}
	d.set(time.Now().Add(20 * time.Millisecond))
	if !waitPassed(d, 5*time.Second) {
		t.Fatal("a re-armed deadline did not fire")
	}

	// After it fired: armed again it fires again; disarmed it stays open.
	d.set(time.Now().Add(20 * time.Millisecond))
	if deadlinePassed(d) {
		t.Fatal("re-armed in the future, the deadline still counts as passed")
	}
	if !waitPassed(d, 5*time.Second) {
		t.Fatal("a deadline armed after it fired did not fire")
	}
	d.set(time.Now().Add(time.Hour))
	d.set(time.Time{})
	if waitPassed(d, 50*time.Millisecond) {
		t.Fatal("a disarmed deadline fired")
	}

	// A timer stopped before its channel was closed by a past setting is not re-armed:
	// it would close that channel a second time.
	d.set(time.Now().Add(time.Hour))
	d.set(time.Now().Add(-time.Second))
	d.set(time.Now().Add(20 * time.Millisecond))
	if deadlinePassed(d) {
		t.Fatal("re-armed in the future after passing, the deadline still counts as passed")
	}
	if !waitPassed(d, 5*time.Second) {
		t.Fatal("a deadline re-armed after a past setting did not fire")
	}
}

// TestDeadlineRearmAllocatesNothing: a server that sets a read deadline around every
// request re-arms one timer instead of making one each time.
func TestDeadlineRearmAllocatesNothing(t *testing.T) {
	d := newDeadline()
	d.set(time.Now().Add(time.Hour))
	allocs := testing.AllocsPerRun(100, func() {
		d.set(time.Now().Add(time.Hour))
		d.set(time.Time{})
	})
	if allocs != 0 {
		t.Fatalf("re-arming a deadline allocated %.1f times a run; want 0", allocs)
	}
}

// TestDeadlineSetWhileFiring races settings against the timer firing: none may close a
// channel twice or leave a passed deadline reading as open.
func TestDeadlineSetWhileFiring(t *testing.T) {
	d := newDeadline()
	for i := range 2000 {
		d.set(time.Now().Add(time.Duration(i%50) * time.Microsecond))
		time.Sleep(time.Duration(i%7) * 10 * time.Microsecond)
		d.set(time.Now().Add(time.Duration(i%3) * time.Microsecond))
	}
	d.set(time.Now().Add(-time.Second))
	if !deadlinePassed(d) {
		t.Fatal("a past deadline has not passed")
	}
}
