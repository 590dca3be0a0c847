package proxy

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
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
	var (
		t   target
		eps []state.Endpoint
	)
	if d.svc != nil {
		svcName = d.svc.GetNamespace() + "/" + d.svc.GetHostname()
		sni := func() string {
			bc, ok := c.(*bufConn)
			if !ok {
				return ""
			}
			// A client that sends part of a hello and stalls must not hold the stream.
			if dl, ok := bc.HalfCloser.(interface{ SetReadDeadline(time.Time) error }); ok {
				_ = dl.SetReadDeadline(time.Now().Add(p.cfg.SniffTimeout))
				defer dl.SetReadDeadline(time.Time{})
			}
			name, br := peekSNI(bc.r)
			bc.r = br
			return name
		}
		t, err = p.tcpTarget(svcName, d.authority.Port(), sni)
		if err == nil {
			svcName = t.svcKey
			eps, err = p.tcpEndpoints(t)
		}
		if err == nil {
			dest := p.dest(t)
			release, aerr := dest.acquire(ctx, t.pol)
			if errors.Is(aerr, errOverflow) {
				p.cfg.Metrics.overflow(t.svcKey, "pending")
			}
			err = aerr
			if err == nil {
				defer release()
				pr := pickReq{pol: t.pol}
				if t.pol != nil {
					if t.pol.HashSourceIP {
						pr.hashKey, pr.hasKey = d.clientIP, true
					}
					if t.pol.LB == configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN {
						pr.rr = &dest.rr
					}
				}
				ep = p.lb.pick(eps, nil, pr)
				defer p.lb.release(ep.addr)
			}
		}
	} else if d.wl != nil {
		ep = endpoint{addr: d.authority, wl: d.wl}
	} else {
		err = errors.New("unknown destination")
	}
	var up hbone.HalfCloser
	if err == nil {
		timeout := 10 * time.Second
		if t.pol != nil && t.pol.ConnectTimeout > 0 {
			timeout = t.pol.ConnectTimeout
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		up, err = p.up.dial(dctx, ep.addr, d.client, d.trace, d.baggage)
		cancel()
		if len(eps) > 0 {
			status := 200 // a connection that opens counts as a success for outlier detection
			if err != nil {
				status = 0
			}
			p.lb.result(ep.addr, status, eps, t.pol)
		}
	}
	if err != nil {
		p.cfg.Metrics.tcp(d, ep, 0, 0, true)
		p.log.Info("tcp pass-through failed", "src", d.client.String(), "dst", d.authority.String(), "service", svcName, "err", err)
		c.Close()
		return
	}
	sent, received, err := hbone.Splice(c, up)
	p.cfg.Metrics.tcp(d, ep, sent, received, false)
	if !p.cfg.AccessLog.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
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

// tcpTarget is where an opaque TCP connection to Service svcKey's port goes: the backend of
// the Service's first TCP route for the port (and the TLS server name sni, when the route
// names some; sni reads it), picked by weight, else the Service itself.
func (p *Proxy) tcpTarget(svcKey string, port uint16, sni func() string) (target, error) {
	t := target{svcKey: svcKey, port: port}
	tbl := (*p.routes.Load())[svcKey]
	if tbl == nil {
		return t, nil
	}
	name := ""
	for _, r := range tbl.TCPRoutes {
		if len(r.SNIHosts) > 0 { // read the server name only when a route asks for it
			name = sni()
			break
		}
	}
	rt := tbl.MatchTCP(port, name)
	if rt == nil {
		return t, nil
	}
	b, ok := rt.PickBackend()
	if !ok {
		return t, errors.New("tcp route " + rt.Name + " has no backend with a weight above 0")
	}
	if b.Service != "" {
		t.svcKey, t.port = b.Service, uint16(b.Port)
		if t.port == 0 {
			t.port = port
		}
		t.subset, t.subsetName = b.Subset, b.SubsetName
		t.pol = b.Policy.ForPort(t.port)
	}
	return t, nil
}

// tcpEndpoints are the endpoints of t's Service port (and subset).
func (p *Proxy) tcpEndpoints(t target) ([]state.Endpoint, error) {
	svc, ok := p.cfg.State.ServiceByName(t.svcKey)
	if !ok {
		return nil, errors.New("service " + t.svcKey + " does not exist")
	}
	eps := p.cfg.State.Endpoints(svc, t.port)
	if len(t.subset) > 0 {
		eps = inSubset(eps, t.subset)
	}
	if len(eps) == 0 {
		return nil, errors.New("service has no endpoint for the port")
	}
	return eps, nil
}
