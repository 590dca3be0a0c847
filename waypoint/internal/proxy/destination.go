package proxy

import (
	"context"
	"errors"
	"sync"

	"ambit.dev/waypoint/internal/route"
)

// destination is the waypoint's state for one destination, a Service or one subset of it:
// the connection pool's requests in flight and waiting, the retries in flight its retry
// budget bounds, and the round-robin cursor. The limits come with each request (the
// destination's compiled policy), so a new RouteConfig applies to the next request.
type destination struct {
	mu      sync.Mutex
	active  int
	waiters []chan struct{}
	retries int
	rr      uint64
}

// destinations holds one destination per key ("<service>|<port>|<subset>"), made on first
// use.
type destinations struct{ m sync.Map }

func (ds *destinations) get(key string) *destination {
	if d, ok := ds.m.Load(key); ok {
		return d.(*destination)
	}
	d, _ := ds.m.LoadOrStore(key, &destination{})
	return d.(*destination)
}

// errOverflow: the destination's pending queue is full.
var errOverflow = errors.New("upstream connection pool overflow")

// acquire takes one of the destination's slots for a request, waiting in the pending queue
// when they are all taken. With the queue full it fails at once with errOverflow. release
// gives the slot to the oldest waiter, or back.
func (d *destination) acquire(ctx context.Context, pol *route.Policy) (release func(), err error) {
	limit := pol.MaxInFlight()
	d.mu.Lock()
	if limit == 0 || (d.active < limit && len(d.waiters) == 0) {
		d.active++
		d.mu.Unlock()
		return d.release, nil
	}
	if pol.MaxPending > 0 && len(d.waiters) >= pol.MaxPending {
		d.mu.Unlock()
		return nil, errOverflow
	}
	ch := make(chan struct{})
	d.waiters = append(d.waiters, ch)
	d.mu.Unlock()
	select {
	case <-ch:
		return d.release, nil // the releaser handed its slot over: active already counts it
	case <-ctx.Done():
	}
	d.mu.Lock()
	for i, w := range d.waiters {
		if w == ch {
			d.waiters = append(d.waiters[:i], d.waiters[i+1:]...)
			d.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	d.mu.Unlock()
	d.release() // handed a slot as ctx ended: pass it on
	return nil, ctx.Err()
}

func (d *destination) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.waiters) > 0 {
		close(d.waiters[0])
		d.waiters = d.waiters[1:]
		return
	}
	d.active--
}

// tryRetry reports whether the policy lets one more retry start now (connectionPool
// maxRetries and the retry budget); if so the caller must call endRetry when it ends.
func (d *destination) tryRetry(pol *route.Policy) bool {
	if pol == nil {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if pol.MaxRetries > 0 && d.retries >= pol.MaxRetries {
		return false
	}
	if pol.BudgetPercent > 0 && d.retries >= max(pol.BudgetMinRetry, int(pol.BudgetPercent*float64(d.active)/100)) {
		return false
	}
	d.retries++
	return true
}

func (d *destination) endRetry() {
	d.mu.Lock()
	d.retries--
	d.mu.Unlock()
}
