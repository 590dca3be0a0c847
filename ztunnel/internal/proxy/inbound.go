package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"ambit.dev/proto/authz"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/hbone"
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
	w := p.workload()
	src := r.Remote.Addr()
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
			src = r.Forwarded.Addr()
		}
	}
	d := authz.Evaluate(p.node.State.Policies(w), authz.Request{
		Principal: r.Peer.String(),
		Namespace: peerNamespace(r.Peer),
		Source:    src,
		Port:      uint32(r.Authority.Port()),
	})
	conn := p.node.Metrics.open(reporterDestination, nil, w, r.Peer.String(), p.id.String(), true)
	if !d.Allow {
		conn.deny()
		p.log.Info("inbound denied", "peer", r.Peer.String(), "src", src.String(), "dst", r.Authority.String(), "policy", d.Policy, "reason", d.Reason)
		_ = r.Reject(401, d.Reason)
		return
	}
	up, err := p.net.Dial(ctx, r.Authority.String())
	if err != nil {
		conn.close(0, 0)
		p.log.Info("inbound: destination unreachable", "dst", r.Authority.String(), "err", err)
		_ = r.Reject(503, "destination unreachable: "+err.Error())
		return
	}
	st, err := r.Accept()
	if err != nil {
		up.Close()
		conn.close(0, 0)
		return
	}
	toApp, fromApp, err := hbone.Splice(st, up)
	conn.close(fromApp, toApp)
	p.log.Info("inbound closed", "peer", r.Peer.String(), "src", src.String(), "dst", r.Authority.String(),
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
	if p.node.State.Strict(w) {
		p.log.Info("inbound plaintext refused: STRICT mTLS", "src", src.String(), "dst", dst.String())
		return
	}
	d := authz.Evaluate(p.node.State.Policies(w), authz.Request{Source: src.Addr(), Port: uint32(dst.Port())})
	conn := p.node.Metrics.open(reporterDestination, nil, w, "", p.id.String(), false)
	if !d.Allow {
		conn.deny()
		p.log.Info("inbound plaintext denied", "src", src.String(), "dst", dst.String(), "reason", d.Reason)
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	up, err := p.net.Dial(ctx, dst.String())
	cancel()
	if err != nil {
		conn.close(0, 0)
		p.log.Info("inbound plaintext: destination unreachable", "dst", dst.String(), "err", err)
		return
	}
	sent, received, err := hbone.Splice(c, up)
	conn.close(received, sent)
	p.log.Info("inbound plaintext closed", "src", src.String(), "dst", dst.String(), "err", errString(err))
}
