package proxy

import (
	"net/netip"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// PeerInfo is who is behind one inbound connection, as ztunnel verified it.
type PeerInfo struct {
	// Identity is the SPIFFE ID proven by the HBONE peer's certificate; zero for plaintext.
	Identity spiffeid.ID
	// MTLS is true when the connection arrived over HBONE.
	MTLS bool
}

// peerKey is an inbound connection's 4-tuple as the application sees it: Src is its remote
// address (the local address of ztunnel's dial), Dst its local address.
type peerKey struct{ src, dst netip.AddrPort }

// peerTable maps every live inbound connection to its peer, so that an application can ask
// the node API who called it. Entries live exactly as long as the connection.
type peerTable struct {
	mu sync.RWMutex
	m  map[peerKey]PeerInfo
}

func (t *peerTable) add(src, dst netip.AddrPort, p PeerInfo) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[peerKey]PeerInfo{}
	}
	t.m[peerKey{unmap(src), unmap(dst)}] = p
}

func (t *peerTable) remove(src, dst netip.AddrPort) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, peerKey{unmap(src), unmap(dst)})
}

func (t *peerTable) lookup(src, dst netip.AddrPort) (PeerInfo, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	p, ok := t.m[peerKey{unmap(src), unmap(dst)}]
	return p, ok
}

func (t *peerTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// Peer returns the peer of the live inbound connection that the application sees coming
// from src to dst.
func (n *Node) Peer(src, dst netip.AddrPort) (PeerInfo, bool) { return n.peers.lookup(src, dst) }

// Peers returns how many inbound connections are live (have a peer record).
func (n *Node) Peers() int { return n.peers.len() }
