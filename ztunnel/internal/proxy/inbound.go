package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"ambit.dev/mesh/authz"
	"ambit.dev/mesh/hbone"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// workload returns the pod's current config: the state may have changed since the pod
// started (labels, policies, waypoint binding).
func (p *Pod) workload() *configv1.Workload {
	for _, a := range p.w.GetAddresses() {
		ip, ok := netip.AddrFromSlice(a)
		if !ok {
			continue
		}
		if w, ok := p.node.State.Workload(ip.Unmap()); ok && w.GetUid() == p.w.GetUid() {
			return w
		}
	}
	return p.w
}

// serveHBONE terminates one tunnelled connection for this pod.
func (p *Pod) serveHBONE(ctx context.Context, r *hbone.Request) {
	start := time.Now()
	if p.node.rev.Refuse(r.Peer) {
		p.log.Info("inbound refused: peer identity revoked", "peer", r.Peer.String())
		_ = r.Reject(401, "peer identity "+r.Peer.String()+" is no longer in the mesh")
		return
	}
	w := p.workload()
	src := r.Remote
	// Only a waypoint relays for others: for its traffic the original client is in
	// Forwarded, which we trust only from the waypoint this workload is bound to.
	if gw := w.GetWaypoint(); gw != nil && gw.GetIdentity() != "" {
		wid, err := spiffeid.FromString(gw.GetIdentity())
		if err != nil || r.Peer != wid {
			p.log.Info("inbound refused: workload is bound to a waypoint", "peer", r.Peer.String(), "waypoint", gw.GetIdentity())
			_ = r.Reject(401, "destination accepts traffic only from its waypoint "+gw.GetIdentity())
			return
		}
		if r.Forwarded.IsValid() {
			src = r.Forwarded
		}
	}
	d := authz.Evaluate(p.node.State.Policies(w), authz.Request{
		Principal: r.Peer.String(),
		Namespace: peerNamespace(r.Peer),
		Source:    src.Addr(),
		Port:      uint32(r.Authority.Port()),
	})
	conn := p.node.Metrics.open(reporterDestination, nil, w, r.Peer.String(), p.id.String(), true, r.Protocol.String())
	if !d.Allow {
		conn.deny()
		p.log.Info("inbound denied", "peer", r.Peer.String(), "src", src.String(), "dst", r.Authority.String(), "policy", d.Policy, "reason", d.Reason)
		_ = r.Reject(401, d.Reason)
		return
	}
	up, release, err := p.dialApp(ctx, r.Authority, src, PeerInfo{Identity: r.Peer, MTLS: true})
	if err != nil {
		conn.close(0, 0)
		p.log.Info("inbound: destination unreachable", "dst", r.Authority.String(), "err", err)
		_ = r.Reject(503, "destination unreachable: "+err.Error())
		return
	}
	defer release()
	st, err := r.Accept()
	if err != nil {
		up.Close()
		conn.close(0, 0)
		return
	}
	untrack, ok := p.trackPeer(r.Peer, st)
	if !ok {
		up.Close()
		conn.close(0, 0)
		return
	}
	defer untrack()
	toApp, fromApp, err := hbone.Splice(st, up)
	conn.close(toApp, fromApp)
	p.log.Info("inbound closed", "peer", r.Peer.String(), "src", src.String(), "dst", r.Authority.String(), "protocol", r.Protocol.String(),
		"bytes_sent", fromApp, "bytes_received", toApp, "duration", time.Since(start).String(), "err", errString(err))
}

// inboundPlain handles plaintext arriving for the pod (redirected to 15006): allowed in
// PERMISSIVE mode, subject to policy as an unauthenticated peer; refused in STRICT.
func (p *Pod) inboundPlain(c *net.TCPConn) {
	defer c.Close()
	w := p.workload()
	dst, err := p.net.OriginalDst(c)
	if err != nil {
		p.log.Warn("inbound plaintext: no original destination", "err", err)
		return
	}
	src := addrOf(c.RemoteAddr())
	if p.ownPort(dst.Port()) {
		p.log.Info("inbound plaintext refused", "src", src.String(), "dst", dst.String(), "reason", errSelfCall(dst).Error())
		return
	}
	if p.node.State.Strict(w) {
		p.log.Info("inbound plaintext refused: STRICT mTLS", "src", src.String(), "dst", dst.String())
		return
	}
	d := authz.Evaluate(p.node.State.Policies(w), authz.Request{Source: src.Addr(), Port: uint32(dst.Port())})
	conn := p.node.Metrics.open(reporterDestination, nil, w, "", p.id.String(), false, tunnelNone)
	if !d.Allow {
		conn.deny()
		p.log.Info("inbound plaintext denied", "src", src.String(), "dst", dst.String(), "reason", d.Reason)
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	up, release, err := p.dialApp(ctx, dst, src, PeerInfo{})
	cancel()
	if err != nil {
		conn.close(0, 0)
		p.log.Info("inbound plaintext: destination unreachable", "dst", dst.String(), "err", err)
		return
	}
	defer release()
	request, response, err := hbone.Splice(c, up)
	conn.close(request, response)
	p.log.Info("inbound plaintext closed", "src", src.String(), "dst", dst.String(), "err", errString(err))
}

// dialApp connects to the application at dst inside the pod, from the original client's
// address src when the Net can, and records the connection's peer for the node API's
// peer lookup until release is called. The record is made before the connection is
// established, so an application that asks as soon as it accepts finds it.
func (p *Pod) dialApp(ctx context.Context, dst, src netip.AddrPort, peer PeerInfo) (up *net.TCPConn, release func(), err error) {
	var local netip.AddrPort
	up, err = p.net.Dial(ctx, dst.String(), DialOptions{Source: src, Local: true, Bound: func(l netip.AddrPort) {
		local = l
		p.node.peers.add(l, dst, peer)
	}})
	if err != nil {
		if local.IsValid() {
			p.node.peers.remove(local, dst)
		}
		return nil, nil, err
	}
	if got := addrOf(up.LocalAddr()); got != local {
		// The Net bound no address ahead (or another one): record what the kernel chose.
		if local.IsValid() {
			p.node.peers.remove(local, dst)
		}
		local = got
		p.node.peers.add(local, dst, peer)
	}
	if src.IsValid() && local.Addr() != src.Addr().Unmap() {
		p.node.noTransparent.Do(func() {
			p.log.Warn("inbound: cannot keep the original source address (no IP_TRANSPARENT); applications see connections from their pod's own address",
				"src", src.String(), "local", local.String())
		})
	}
	if !p.track(up) {
		p.node.peers.remove(local, dst)
		return nil, nil, errors.New("pod proxy closed")
	}
	return up, func() { p.untrack(up); p.node.peers.remove(local, dst) }, nil
}
