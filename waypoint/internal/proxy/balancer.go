package proxy

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
)

// endpoint is the pod a request (or pass-through connection) goes to.
type endpoint struct {
	addr netip.AddrPort // pod IP and target port
	wl   *configv1.Workload
}

// balancer picks endpoints by least outstanding requests, skipping ejected endpoints and,
// on a retry, those already tried; and it runs outlier ejection: consecutive failures in a
// row eject an endpoint for a period that grows with each ejection.
type balancer struct {
	consecutive int
	base        time.Duration
	maxPercent  int
	now         func() time.Time

	mu  sync.Mutex
	eps map[netip.AddrPort]*epStats
}

type epStats struct {
	active       int
	failures     int
	ejectedUntil time.Time
	ejections    int
}

func newBalancer(consecutive int, base time.Duration, maxPercent int, now func() time.Time) *balancer {
	return &balancer{consecutive: consecutive, base: base, maxPercent: maxPercent, now: now, eps: map[netip.AddrPort]*epStats{}}
}

func (b *balancer) statsLocked(a netip.AddrPort) *epStats {
	s := b.eps[a]
	if s == nil {
		s = &epStats{}
		b.eps[a] = s
	}
	return s
}

// pick chooses among eps the endpoint with the fewest requests in flight, ties broken at
// random, preferring endpoints neither ejected nor in tried. When every endpoint is ejected
// or tried, it picks among all of them (panic mode), so that a request is never refused for
// want of a perfect endpoint.
func (b *balancer) pick(eps []state.Endpoint, tried []netip.AddrPort) endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	best, ties := -1, 0
	bestActive := 0
	for pass := 0; pass < 3 && best < 0; pass++ {
		for i, e := range eps {
			s := b.eps[e.Addr]
			if pass < 2 && s != nil && now.Before(s.ejectedUntil) {
				continue
			}
			if pass < 1 && containsAddr(tried, e.Addr) {
				continue
			}
			active := 0
			if s != nil {
				active = s.active
			}
			switch {
			case best < 0 || active < bestActive:
				best, bestActive, ties = i, active, 1
			case active == bestActive:
				ties++
				if rand.IntN(ties) == 0 {
					best = i
				}
			}
		}
	}
	e := eps[best]
	b.statsLocked(e.Addr).active++
	return endpoint{addr: e.Addr, wl: e.Workload}
}

func containsAddr(list []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// release records that a request to a ended.
func (b *balancer) release(a netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.eps[a]
	if s == nil {
		return
	}
	s.active--
	if s.active <= 0 && s.failures == 0 && s.ejections == 0 {
		delete(b.eps, a)
	}
}

// result records the outcome of a request to a for outlier detection; failed is a 5xx, a
// connect failure or a reset. It reports whether the endpoint was ejected by it.
func (b *balancer) result(a netip.AddrPort, failed bool, peers []state.Endpoint) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.statsLocked(a)
	if !failed {
		s.failures = 0
		return false
	}
	s.failures++
	now := b.now()
	if s.failures < b.consecutive || now.Before(s.ejectedUntil) {
		return false
	}
	ejected := 0
	for _, e := range peers {
		if o := b.eps[e.Addr]; o != nil && now.Before(o.ejectedUntil) {
			ejected++
		}
	}
	if len(peers) > 0 && (ejected+1)*100 > b.maxPercent*len(peers) {
		return false
	}
	s.ejections++
	s.ejectedUntil = now.Add(time.Duration(s.ejections) * b.base)
	s.failures = 0
	return true
}

// ejected reports whether a is ejected now, for tests and /config_dump.
func (b *balancer) ejected(a netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.eps[a]
	return s != nil && b.now().Before(s.ejectedUntil)
}
