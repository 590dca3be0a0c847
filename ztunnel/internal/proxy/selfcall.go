package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"ambit.dev/mesh/hbone"
)

// MeshPorts are the ports of ztunnel's own listeners inside every enrolled pod (design.md):
// outbound capture, inbound plaintext and HBONE. Like Istio, the mesh reserves them: an
// application in the mesh cannot use them.
var MeshPorts = []uint16{15001, 15006, 15008}

// A connection whose destination is one of ztunnel's own listeners in the pod would enter
// ztunnel again: a CONNECT to <podIP>:15001 dials the outbound listener, which tunnels back
// to the same pod, and so on, each round taking a stream, two sockets and two goroutines
// until the node runs out. Such self-calls are refused wherever a destination comes from a
// peer or an application: the CONNECT authority, the original destination of plaintext
// arriving at 15006, and the original destination of a pod's own outbound connection.

// ownPort reports whether port is one of ztunnel's listeners in this pod: a mesh port, or
// the port a listener actually got (tests listen on ephemeral ports).
func (p *Pod) ownPort(port uint16) bool {
	return slices.Contains(MeshPorts, port) || slices.Contains(p.ports, port)
}

// errSelfCall says why a destination is refused.
func errSelfCall(dst netip.AddrPort) error {
	return fmt.Errorf("self call refused: %s is one of ztunnel's own ports in the pod", dst)
}

// checkAuthority is the pod's HBONE anti-spoofing check (the authority must be the address
// the tunnel arrived for) plus the self-call refusal; a refused request is answered 400.
func (p *Pod) checkAuthority(ctx context.Context, r *hbone.Request) error {
	if p.ownPort(r.Authority.Port()) {
		return errSelfCall(r.Authority)
	}
	return hbone.SameAddress(ctx, r)
}

// selfDestination reports whether a pod's outbound connection to dst would reach ztunnel's
// own listeners in the pod: an own port on one of the pod's addresses or on loopback.
func (p *Pod) selfDestination(dst netip.AddrPort) bool {
	if !p.ownPort(dst.Port()) {
		return false
	}
	a := dst.Addr().Unmap()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	for _, b := range p.w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok && ip.Unmap() == a {
			return true
		}
	}
	return false
}

func listenerPort(ln net.Listener) uint16 {
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		return uint16(a.Port)
	}
	return 0
}
