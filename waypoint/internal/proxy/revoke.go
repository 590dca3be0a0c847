package proxy

import (
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/revoke"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Revocation, as ztunnel does it (package revoke decides for both): when the state no
// longer holds any workload or waypoint with an identity it held, the waypoint closes the
// downstream tunnels that carry it — with every HTTP/1 request, HTTP/2 stream and TCP
// pass-through on them, and their upstream requests — and refuses new tunnels with 401
// until the identity comes back. A tunnel carries its verified peer and, when the waypoint
// knows the workload at the original client's address, that workload's identity too.
//
// The waypoint's own identity (the configured one and the one its Waypoint resource names)
// is never revoked: replicas of the waypoint stay peers whatever the state says.

func (p *Proxy) newRevocations() *revoke.Tracker {
	var m *revoke.Metrics
	if p.cfg.Metrics != nil {
		m = p.cfg.Metrics.revoked
	}
	return revoke.New(revoke.Config{
		State: p.cfg.State, TrustDomain: p.cfg.TrustDomain,
		Keep:     func() []spiffeid.ID { return []spiffeid.ID{p.cfg.Identity, p.Identity()} },
		Reporter: reporter, Metrics: m, Logger: p.log,
	})
}

// callerIdentities are the identities a downstream tunnel carries: its peer's and the
// original client workload's.
func (p *Proxy) callerIdentities(d *downstream) []spiffeid.ID {
	ids := []spiffeid.ID{d.peer}
	if d.src != nil {
		if id, err := identity.WorkloadIdentity(d.src, p.cfg.TrustDomain); err == nil && id != d.peer {
			ids = append(ids, id)
		}
	}
	return ids
}

// refuseRevoked returns the first of ids that is revoked, counting the refusal.
func (p *Proxy) refuseRevoked(ids []spiffeid.ID) (spiffeid.ID, bool) {
	for _, id := range ids {
		if p.rev.Refuse(id) {
			return id, true
		}
	}
	return spiffeid.ID{}, false
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
