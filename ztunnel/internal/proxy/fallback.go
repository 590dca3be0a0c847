package proxy

import (
	"cmp"
	"slices"

	"ambit.dev/proto/dump"
)

// TunnelFallbacks lists, for /config_dump, the peers marked HBONE_H3 that the node's pods
// reach over HTTP/2 for now because no QUIC handshake with them completed.
func (n *Node) TunnelFallbacks() []dump.TunnelFallback {
	n.podsMu.Lock()
	pods := make([]*Pod, 0, len(n.pods))
	for p := range n.pods {
		pods = append(pods, p)
	}
	n.podsMu.Unlock()
	out := []dump.TunnelFallback{}
	for _, p := range pods {
		name := p.w.GetNamespace() + "/" + p.w.GetName()
		for addr, until := range p.client.FallbacksH2() {
			out = append(out, dump.TunnelFallback{Pod: name, Peer: addr.String(), Until: until.UTC()})
		}
	}
	slices.SortFunc(out, func(a, b dump.TunnelFallback) int {
		return cmp.Or(cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.Peer, b.Peer))
	})
	return out
}
