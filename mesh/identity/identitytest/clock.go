// Package identitytest provides test doubles for package identity, kept out of
// the production package so they never ship in a binary.
package identitytest

import (
	"context"
	"slices"
	"sync"
	"time"

	"ambit.dev/mesh/identity"
)

// FakeClock is an identity.Clock whose time moves only when a test says so.
// Timers fire, in deadline order, when Advance or Set reaches their deadline.
// It is safe for concurrent use.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	changed chan struct{} // closed and replaced whenever a timer is added
}

var _ identity.Clock = (*FakeClock)(nil)

// NewFakeClock returns a FakeClock reading now.
func NewFakeClock(now time.Time) *FakeClock {
	return &FakeClock{now: now, changed: make(chan struct{})}
}

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when the fake time reaches Now()+d; at
// once if d <= 0.
func (c *FakeClock) NewTimer(d time.Duration) identity.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clock: c, deadline: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	close(c.changed)
	c.changed = make(chan struct{})
	return t
}

// Advance moves the time forward by d and fires the timers that became due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.now.Add(d))
}

// Set moves the time to t (which may not be earlier than Now) and fires the
// timers that became due.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Before(c.now) {
		return
	}
	c.setLocked(t)
}

func (c *FakeClock) setLocked(t time.Time) {
	c.now = t
	slices.SortStableFunc(c.timers, func(a, b *fakeTimer) int { return a.deadline.Compare(b.deadline) })
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if tm.deadline.After(t) {
			kept = append(kept, tm)
			continue
		}
		tm.ch <- t // buffered 1 and fired once, never blocks
	}
	clear(c.timers[len(kept):])
	c.timers = kept
}

// Timers returns the deadlines of the pending timers, earliest first.
func (c *FakeClock) Timers() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]time.Time, len(c.timers))
	for i, t := range c.timers {
		out[i] = t.deadline
	}
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// WaitForTimer blocks until a pending timer satisfies match (any timer if
// match is nil) and returns its deadline, or returns ctx's error. Tests use it
// to know that the code under test is waiting before they move the time.
func (c *FakeClock) WaitForTimer(ctx context.Context, match func(deadline time.Time) bool) (time.Time, error) {
	for {
		c.mu.Lock()
		var found time.Time
		ok := false
		for _, t := range c.timers {
			if (match == nil || match(t.deadline)) && (!ok || t.deadline.Before(found)) {
				found, ok = t.deadline, true
			}
		}
		changed := c.changed
		c.mu.Unlock()
		if ok {
			return found, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

type fakeTimer struct {
	clock    *FakeClock
	deadline time.Time
	ch       chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

// Stop reports whether it removed a pending timer, as time.Timer.Stop does.
func (t *fakeTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.timers, t)
	if i < 0 {
		return false
	}
	c.timers = slices.Delete(c.timers, i, i+1)
	return true
}
