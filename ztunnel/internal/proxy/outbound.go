package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// route is where an outbound connection goes.
type route struct {
	// hbone is set when the connection is tunnelled; otherwise it passes through to dst.
	hbone *hbone.Target
	dst   netip.AddrPort
	// dstWorkload is the destination, for telemetry; nil outside the mesh.
	dstWorkload *configv1.Workload
	via         string // "direct", "hbone", "waypoint", "passthrough"
	// picked is the endpoint the balancer chose, to release when the connection ends.
	picked netip.AddrPort
}

// resolve decides how to reach dst, the original destination of a captured connection.
func (p *Pod) resolve(dst netip.AddrPort, src netip.AddrPort) (route, error) {
	st := p.node.State
	target := func(addr netip.Addr, ids []spiffeid.ID, authority netip.AddrPort) *hbone.Target {
		return &hbone.Target{
			Source:     p.id,
			Address:    netip.AddrPortFrom(addr, hbone.Port),
			Identities: ids,
			Authority:  authority,
			Forwarded:  src,
			Protocol:   p.tunnelTo(addr),
		}
	}
	viaWaypoint := func(gw *configv1.GatewayAddress, authority netip.AddrPort, w *configv1.Workload) (route, error) {
		addr, ok := netip.AddrFromSlice(gw.GetAddress().GetAddress())
		if !ok {
			return route{}, fmt.Errorf("waypoint of %s has no address", authority)
		}
		id, err := spiffeid.FromString(gw.GetIdentity())
		if err != nil {
			return route{}, fmt.Errorf("waypoint of %s: identity %q: %w", authority, gw.GetIdentity(), err)
		}
		port := uint16(gw.GetHbonePort())
		if port == 0 {
			port = hbone.Port
		}
		t := target(addr.Unmap(), []spiffeid.ID{id}, authority)
		t.Address = netip.AddrPortFrom(addr.Unmap(), port)
		t.Protocol = p.tunnelToWaypoint(gw)
		return route{hbone: t, dst: authority, dstWorkload: w, via: "waypoint"}, nil
	}
	toWorkload := func(w *configv1.Workload, addr netip.AddrPort) (route, error) {
		if w.GetWaypoint() != nil && w.GetWaypoint().GetAddress() != nil {
			return viaWaypoint(w.GetWaypoint(), addr, w)
		}
		if w.GetTunnelProtocol() == configv1.TunnelProtocol_NONE {
			return route{dst: addr, dstWorkload: w, via: "direct"}, nil
		}
		id, err := identity.WorkloadIdentity(w, p.node.TrustDomain)
		if err != nil {
			return route{}, err
		}
		return route{hbone: target(addr.Addr(), []spiffeid.ID{id}, addr), dst: addr, dstWorkload: w, via: "hbone"}, nil
	}

	if svc, ok := st.Service(dst.Addr()); ok {
		if gw := svc.GetWaypoint(); gw != nil && gw.GetAddress() != nil {
			return viaWaypoint(gw, dst, nil)
		}
		eps := st.Endpoints(svc, dst.Port())
		if len(eps) == 0 {
			return route{}, fmt.Errorf("service %s/%s has no endpoint for port %d", svc.GetNamespace(), svc.GetName(), dst.Port())
		}
		ep := p.lb.pick(svc, eps)
		if gw := ep.Workload.GetWaypoint(); gw != nil && gw.GetAddress() != nil {
			// The endpoint is bound to a waypoint through its service account or namespace:
			// the waypoint gets the connection addressed to the VIP, so that it routes by the
			// Service's HTTPRoutes (splits, retries) and balances itself.
			p.lb.done(ep.Addr)
			return viaWaypoint(gw, dst, nil)
		}
		r, err := toWorkload(ep.Workload, ep.Addr)
		r.picked = ep.Addr
		if err != nil {
			p.lb.done(ep.Addr)
		}
		return r, err
	}
	if w, ok := st.Workload(dst.Addr()); ok {
		return toWorkload(w, dst)
	}
	return route{dst: dst, via: "passthrough"}, nil
}

// outbound handles one connection the pod opened, redirected to 15001.
func (p *Pod) outbound(c *net.TCPConn) {
	defer c.Close()
	start := time.Now()
	dst, err := p.net.OriginalDst(c)
	if err != nil {
		p.log.Warn("outbound: no original destination", "err", err)
		return
	}
	src := addrOf(c.RemoteAddr())
	if p.selfDestination(dst) {
		p.log.Info("outbound refused", "dst", dst.String(), "err", errSelfCall(dst).Error())
		return
	}
	r, err := p.resolve(dst, src)
	if err != nil {
		p.log.Info("outbound refused", "dst", dst.String(), "err", err)
		return
	}
	if r.picked.IsValid() {
		defer p.lb.done(r.picked)
	}
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	var up hbone.HalfCloser
	if r.hbone != nil {
		up, err = p.client.Dial(ctx, *r.hbone)
	} else {
		up, err = p.net.Dial(ctx, r.dst.String(), DialOptions{})
	}
	cancel()
	tunnel := tunnelNone
	if r.hbone != nil {
		tunnel = r.hbone.Protocol.String()
	}
	if st, ok := up.(*hbone.Stream); ok && err == nil {
		tunnel = st.Protocol().String()
	}
	conn := p.node.Metrics.open(reporterSource, p.workload(), r.dstWorkload, p.id.String(), peerID(r), r.hbone != nil, tunnel)
	if err != nil {
		conn.close(0, 0)
		p.log.Info("outbound dial failed", "dst", dst.String(), "via", r.via, "err", err)
		return
	}
	if !p.track(up) {
		conn.close(0, 0)
		return
	}
	defer p.untrack(up)
	p.log.Debug("outbound open", "src", src.String(), "dst", dst.String(), "via", r.via)
	sent, received, err := hbone.Splice(c, up)
	conn.close(sent, received)
	p.log.Info("outbound closed", "src", src.String(), "dst", dst.String(), "via", r.via, "protocol", tunnel,
		"bytes_sent", sent, "bytes_received", received, "duration", time.Since(start).String(), "err", errString(err))
}

// tunnelTo is the tunnel protocol the proxy at addr (a workload's ztunnel or a waypoint)
// speaks, from pushed config: HTTP/3 only when the controller marked the workload
// HBONE_H3 and this pod can open UDP sockets. The client falls back to HTTP/2 by itself.
func (p *Pod) tunnelTo(addr netip.Addr) hbone.Protocol {
	if p.net.ListenPacket == nil {
		return hbone.ProtocolH2
	}
	if w, ok := p.node.State.Workload(addr); ok && w.GetTunnelProtocol() == configv1.TunnelProtocol_HBONE_H3 {
		return hbone.ProtocolH3
	}
	return hbone.ProtocolH2
}

// tunnelToWaypoint is HTTP/3 when the controller says the waypoint takes it (the binding's
// tunnel_protocol) and this pod can send UDP; the client falls back to HTTP/2 by itself when
// the QUIC handshake does not complete.
func (p *Pod) tunnelToWaypoint(gw *configv1.GatewayAddress) hbone.Protocol {
	if p.net.ListenPacket != nil && gw.GetTunnelProtocol() == configv1.TunnelProtocol_HBONE_H3 {
		return hbone.ProtocolH3
	}
	return hbone.ProtocolH2
}

func peerID(r route) string {
	if r.hbone == nil || len(r.hbone.Identities) == 0 {
		return ""
	}
	return r.hbone.Identities[0].String()
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
