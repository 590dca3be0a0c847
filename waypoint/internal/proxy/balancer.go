package proxy

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
)

// endpoint is the pod a request (or pass-through connection) goes to.
type endpoint struct {
	addr netip.AddrPort // pod IP and target port
	wl   *configv1.Workload
	// trial: this pick took the endpoint's trial after an ejection (balancer.abandon).
	trial bool
}

// balancer picks endpoints, skipping ejected endpoints and, on a retry, those already
// tried, by the destination's policy: least outstanding requests (the default), round robin,
// random, or consistent hashing of a key. It runs outlier ejection: failures in a row eject
// an endpoint for a period that grows with each ejection in a row; when it ends, exactly one
// trial request goes to the endpoint, whose success puts it back and whose failure ejects it
// again at once.
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
	failures     int // 5xx, connect failures and resets in a row
	gwFailures   int // 502, 503, 504, connect failures and resets in a row
	ejectedUntil time.Time
	ejections    int
	// trial: the endpoint was ejected and, once the ejection ends, gets one request whose
	// outcome decides; trialBusy: that request is in flight.
	trial, trialBusy bool
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

// pickReq is what a pick may depend on besides the endpoints.
type pickReq struct {
	pol *route.Policy
	// hashKey is the consistent-hash key; ok is false when the request has none.
	hashKey string
	hasKey  bool
	// rr is the destination's round-robin cursor.
	rr *uint64
	// shadow: a mirrored copy, whose outcome nobody reports. It never takes an endpoint's
	// trial (only a request whose answer comes back can decide one) and, like a request,
	// avoids an endpoint ejected or on trial.
	shadow bool
}

// pick chooses among eps by the policy, preferring endpoints neither ejected (nor on trial
// with their one request in flight) nor in tried. When every endpoint is unavailable or
// tried, it picks among all of them (panic mode), so that a request is never refused for want
// of a perfect endpoint.
func (b *balancer) pick(eps []state.Endpoint, tried []netip.AddrPort, pr pickReq) endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var buf [32]int // candidates on the stack for the usual endpoint counts
	cand := buf[:0]
	for pass := 0; pass < 3 && len(cand) == 0; pass++ {
		for i, e := range eps {
			s := b.eps[e.Addr]
			if pass < 2 && s != nil && (now.Before(s.ejectedUntil) || (s.trial && (s.trialBusy || pr.shadow))) {
				continue
			}
			if pass < 1 && containsAddr(tried, e.Addr) {
				continue
			}
			cand = append(cand, i)
		}
	}
	best := b.choose(eps, cand, pr)
	e := eps[best]
	s := b.statsLocked(e.Addr)
	s.active++
	took := false
	if s.trial && !pr.shadow && !now.Before(s.ejectedUntil) {
		took = !s.trialBusy
		s.trialBusy = true
	}
	return endpoint{addr: e.Addr, wl: e.Workload, trial: took}
}

func (b *balancer) choose(eps []state.Endpoint, cand []int, pr pickReq) int {
	if pr.hasKey {
		// Rendezvous hashing: the candidate with the highest hash of (key, endpoint) wins, so
		// a key moves only when its endpoint leaves.
		best, bestH := cand[0], uint64(0)
		for _, i := range cand {
			if h := hrw(pr.hashKey, eps[i].Addr); h > bestH {
				best, bestH = i, h
			}
		}
		return best
	}
	mode := configv1.TrafficPolicy_LoadBalancer_DEFAULT
	if pr.pol != nil {
		mode = pr.pol.LB
	}
	switch mode {
	case configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN:
		if pr.rr != nil {
			n := *pr.rr
			*pr.rr = n + 1
			return cand[n%uint64(len(cand))]
		}
	case configv1.TrafficPolicy_LoadBalancer_RANDOM:
		return cand[rand.IntN(len(cand))]
	}
	best, ties, bestActive := -1, 0, 0
	for _, i := range cand {
		active := 0
		if s := b.eps[eps[i].Addr]; s != nil {
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
	return best
}

// hrw is the rendezvous weight of key on endpoint a: FNV-1a over the key, the address and
// the port, inline so that it does not allocate.
func hrw(key string, a netip.AddrPort) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	x := uint64(offset)
	for i := 0; i < len(key); i++ {
		x ^= uint64(key[i])
		x *= prime
	}
	ip := a.Addr().As16()
	for _, c := range ip {
		x ^= uint64(c)
		x *= prime
	}
	x ^= uint64(a.Port() >> 8)
	x *= prime
	x ^= uint64(a.Port() & 0xff)
	x *= prime
	// splitmix64's finalizer: FNV's low-entropy outputs for similar inputs spread out.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
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
	if s.active <= 0 && s.failures == 0 && s.gwFailures == 0 && s.ejections == 0 && !s.trial {
		delete(b.eps, a)
	}
}

// abandon records that a request to ep ended with no verdict on the endpoint (the client
// went away first): it counts neither way, and if its pick took the endpoint's trial, the
// next request takes it.
func (b *balancer) abandon(ep endpoint) {
	if !ep.trial {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.eps[ep.addr]; s != nil && s.trial {
		s.trialBusy = false
	}
}

// result records the outcome of a request to a for outlier detection: status is the
// response's status, 0 for a connect failure or a reset. pol, when it sets outlier detection,
// replaces the waypoint's defaults (with zero thresholds it turns ejection off). It reports
// whether the endpoint was ejected by it.
func (b *balancer) result(a netip.AddrPort, status int, peers []state.Endpoint, pol *route.Policy) bool {
	consec5xx, consecGW, base, maxPercent := b.consecutive, 0, b.base, b.maxPercent
	if pol != nil && (pol.Outlier || pol.Consecutive5xx > 0 || pol.ConsecutiveGateway > 0) {
		consec5xx, consecGW, base, maxPercent = pol.Consecutive5xx, pol.ConsecutiveGateway, pol.BaseEjection, pol.MaxEjectionPercent
	}
	fail5xx := status == 0 || status >= 500
	failGW := status == 0 || status == 502 || status == 503 || status == 504
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.statsLocked(a)
	now := b.now()
	if now.Before(s.ejectedUntil) {
		return false // an answer to a request sent before the ejection
	}
	if s.trial {
		if !s.trialBusy {
			return false // an answer to a request sent before the ejection
		}
		s.trialBusy = false
		if !fail5xx {
			s.trial, s.ejections, s.failures, s.gwFailures = false, 0, 0, 0
			return false
		}
		s.ejections++
		s.ejectedUntil = now.Add(time.Duration(s.ejections) * base)
		return true
	}
	if !fail5xx {
		s.failures, s.gwFailures = 0, 0
		return false
	}
	s.failures++
	if failGW {
		s.gwFailures++
	} else {
		s.gwFailures = 0
	}
	if !(consec5xx > 0 && s.failures >= consec5xx) && !(consecGW > 0 && s.gwFailures >= consecGW) {
		return false
	}
	ejected := 0
	for _, e := range peers {
		if o := b.eps[e.Addr]; o != nil && (now.Before(o.ejectedUntil) || o.trial) {
			ejected++
		}
	}
	if len(peers) > 0 && (ejected+1)*100 > maxPercent*len(peers) {
		return false
	}
	s.ejections++
	s.ejectedUntil = now.Add(time.Duration(s.ejections) * base)
	s.failures, s.gwFailures = 0, 0
	s.trial, s.trialBusy = true, false
	return true
}

// ejected reports whether a is ejected now, for tests and /config_dump.
func (b *balancer) ejected(a netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.eps[a]
	return s != nil && b.now().Before(s.ejectedUntil)
}

// inFlight is the number of requests picked and not yet released, for tests.
func (b *balancer) inFlight() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, s := range b.eps {
		n += s.active
	}
	return n
}
