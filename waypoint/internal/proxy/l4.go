package proxy

import (
	"context"
	"errors"
	"time"

	"ambit.dev/mesh/hbone"
)

// serveL4 passes a connection that is not HTTP through to its destination: a pod of the
// destination Service picked by the balancer (or the pod named by the authority), over
// HBONE under the waypoint's identity, carrying the original client in Forwarded.
func (p *Proxy) serveL4(ctx context.Context, d *downstream, c hbone.HalfCloser) {
	start := time.Now()
	var (
		ep  endpoint
		err error
	)
	svcName := ""
	if d.svc != nil {
		svcName = d.svc.GetNamespace() + "/" + d.svc.GetHostname()
		eps := p.cfg.State.Endpoints(d.svc, d.authority.Port())
		if len(eps) == 0 {
			err = errors.New("service has no endpoint for the port")
		} else {
			ep = p.lb.pick(eps, nil, pickReq{})
			defer p.lb.release(ep.addr)
		}
	} else if d.wl != nil {
		ep = endpoint{addr: d.authority, wl: d.wl}
	} else {
		err = errors.New("unknown destination")
	}
	var up hbone.HalfCloser
	if err == nil {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		up, err = p.up.dial(dctx, ep.addr, d.client, d.trace, d.baggage)
		cancel()
	}
	if err != nil {
		p.cfg.Metrics.tcp(d, ep, 0, 0, true)
		p.log.Info("tcp pass-through failed", "src", d.client.String(), "dst", d.authority.String(), "service", svcName, "err", err)
		c.Close()
		return
	}
	sent, received, err := hbone.Splice(c, up)
	p.cfg.Metrics.tcp(d, ep, sent, received, false)
	p.cfg.AccessLog.Info("tcp", "src", d.client.String(), "src_principal", d.peer.String(), "dst", d.authority.String(),
		"service", svcName, "endpoint", ep.addr.String(), "bytes_sent", sent, "bytes_received", received,
		"duration", time.Since(start).String(), "err", errString(err))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
