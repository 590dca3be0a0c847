package proxy

import (
	"io"

	"ambit.dev/mesh/revoke"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Revocation (package revoke decides it, for the waypoint too): when an identity that the
// state held disappears from it, the node closes, on every pod, the inbound tunnels that
// carry it as their verified peer, and refuses new ones with 401 until it comes back. The
// pod's own outbound tunnels end when the pod leaves: Pod.Close closes them.

// watchRevocations starts following the state's identities, once.
func (n *Node) watchRevocations() {
	n.revokeOnce.Do(func() {
		var m *revoke.Metrics
		if n.Metrics != nil {
			m = n.Metrics.revoked
		}
		n.rev = revoke.New(revoke.Config{State: n.State, TrustDomain: n.TrustDomain, Reporter: reporterDestination, Metrics: m, Logger: n.Logger})
	})
}

// trackPeer records an inbound tunnel carrying peer, to be closed if peer is revoked; false
// means the peer is revoked (or the pod closed) and c was closed instead. Call untrack when
// the tunnel ends.
func (p *Pod) trackPeer(peer spiffeid.ID, c io.Closer) (untrack func(), ok bool) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		c.Close()
		return nil, false
	}
	return p.node.rev.Track(c, peer)
}
