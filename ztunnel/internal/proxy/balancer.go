package proxy

import (
	"math/rand/v2"
	"net/netip"
	"sync"

	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
)

// balancer picks an endpoint for a new connection and counts the connections open to
// each, for least-request and power-of-two-choices.
type balancer struct {
	mu     sync.Mutex
	active map[netip.AddrPort]int
}

func newBalancer() *balancer { return &balancer{active: map[netip.AddrPort]int{}} }

func (b *balancer) pick(svc *configv1.Service, eps []state.Endpoint) state.Endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ep state.Endpoint
	switch mode := svc.GetLoadBalancing().GetMode(); {
	case len(eps) == 1:
		ep = eps[0]
	case mode == configv1.LoadBalancing_RANDOM:
		ep = eps[rand.IntN(len(eps))]
	case mode == configv1.LoadBalancing_LEAST_REQUEST:
		best := -1
		for i, e := range eps {
			if best < 0 || b.active[e.Addr] < b.active[eps[best].Addr] ||
				(b.active[e.Addr] == b.active[eps[best].Addr] && rand.IntN(2) == 0) {
				best = i
			}
		}
		ep = eps[best]
	default: // P2C
		i := rand.IntN(len(eps))
		j := rand.IntN(len(eps) - 1)
		if j >= i {
			j++
		}
		ep = eps[i]
		if b.active[eps[j].Addr] < b.active[ep.Addr] {
			ep = eps[j]
		}
	}
	b.active[ep.Addr]++
	return ep
}

// done records that a connection to addr ended.
func (b *balancer) done(addr netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.active[addr] <= 1 {
		delete(b.active, addr)
		return
	}
	b.active[addr]--
}
