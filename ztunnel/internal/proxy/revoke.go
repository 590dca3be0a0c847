package proxy

import (
	"io"
	"sync"

	"ambit.dev/mesh/identity"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Revocation: a certificate lives 24 hours, but an identity stops being valid as soon as
// nothing in the mesh carries it any more — its pods, its ServiceAccount or its namespace
// removed, or the workloads left the mesh. The pushed state says so: ztunnel receives every
// Workload of the mesh (whatever node it runs on) and every Waypoint. When an identity that
// the state held disappears from it, the node closes, on every pod, the inbound tunnels that
// carry it as their verified peer, and refuses new ones with 401 until it comes back.
//
// Only an identity seen in the state and then gone is revoked: a peer the state never named
// (config not yet pushed, a ztunnel that just started) is judged by policy as before, so
// that revocation never refuses traffic because config is late. The pod's own outbound
// tunnels end when the pod leaves: Pod.Close closes them.
type revocation struct {
	mu      sync.Mutex
	known   map[spiffeid.ID]bool // identities the state held at the last change
	revoked map[spiffeid.ID]bool // held once, gone now
	pods    map[*Pod]struct{}
}

// watchRevocations registers the node's state watcher, once.
func (n *Node) watchRevocations() {
	n.revokeOnce.Do(func() {
		n.rev.known = n.stateIdentities()
		n.rev.revoked = map[spiffeid.ID]bool{}
		n.rev.pods = map[*Pod]struct{}{}
		n.State.OnChange(n.onStateChange)
	})
}

// stateIdentities is every identity the state vouches for: workloads, the waypoints they
// and services are bound to, and Waypoint resources.
func (n *Node) stateIdentities() map[spiffeid.ID]bool {
	ids := map[spiffeid.ID]bool{}
	addGateway := func(gw *configv1.GatewayAddress) {
		if id, err := spiffeid.FromString(gw.GetIdentity()); err == nil {
			ids[id] = true
		}
	}
	for typeURL, res := range n.State.Dump() {
		for _, m := range res {
			switch r := m.(type) {
			case *configv1.Workload:
				if id, err := identity.WorkloadIdentity(r, n.TrustDomain); err == nil {
					ids[id] = true
				}
				addGateway(r.GetWaypoint())
			case *configv1.Service:
				addGateway(r.GetWaypoint())
			case *configv1.Waypoint:
				if id, err := spiffeid.FromString(r.GetIdentity()); err == nil {
					ids[id] = true
				}
			default:
				_ = typeURL
			}
		}
	}
	return ids
}

func (n *Node) onStateChange() {
	now := n.stateIdentities()
	n.rev.mu.Lock()
	var gone []spiffeid.ID
	for id := range n.rev.known {
		if !now[id] && !n.rev.revoked[id] {
			n.rev.revoked[id] = true
			gone = append(gone, id)
		}
	}
	for id := range now {
		delete(n.rev.revoked, id)
	}
	n.rev.known = now
	var closed int
	for p := range n.rev.pods {
		for _, id := range gone {
			closed += p.closePeer(id)
		}
	}
	n.rev.mu.Unlock()
	for _, id := range gone {
		n.Logger.Info("identity revoked: no workload or waypoint of the mesh carries it any more", "identity", id.String(), "tunnels_closed", closed)
	}
}

// revoked reports whether id was in the mesh and has left it.
func (n *Node) revoked(id spiffeid.ID) bool {
	n.rev.mu.Lock()
	defer n.rev.mu.Unlock()
	return n.rev.revoked[id]
}

func (n *Node) addPod(p *Pod) {
	n.rev.mu.Lock()
	n.rev.pods[p] = struct{}{}
	n.rev.mu.Unlock()
}

func (n *Node) removePod(p *Pod) {
	n.rev.mu.Lock()
	delete(n.rev.pods, p)
	n.rev.mu.Unlock()
}

// trackPeer records an inbound tunnel carrying peer, for closePeer; false means the peer
// is revoked (or the pod closed) and c was closed instead. Call untrackPeer when it ends.
func (p *Pod) trackPeer(peer spiffeid.ID, c io.Closer) bool {
	n := p.node
	n.rev.mu.Lock()
	defer n.rev.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if n.rev.revoked[peer] || p.closed {
		c.Close()
		return false
	}
	if p.byPeer == nil {
		p.byPeer = map[spiffeid.ID]map[io.Closer]struct{}{}
	}
	if p.byPeer[peer] == nil {
		p.byPeer[peer] = map[io.Closer]struct{}{}
	}
	p.byPeer[peer][c] = struct{}{}
	return true
}

func (p *Pod) untrackPeer(peer spiffeid.ID, c io.Closer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byPeer[peer], c)
	if len(p.byPeer[peer]) == 0 {
		delete(p.byPeer, peer)
	}
}

// closePeer closes the pod's inbound tunnels carrying peer and returns how many.
func (p *Pod) closePeer(peer spiffeid.ID) int {
	p.mu.Lock()
	conns := p.byPeer[peer]
	delete(p.byPeer, peer)
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	return len(conns)
}
