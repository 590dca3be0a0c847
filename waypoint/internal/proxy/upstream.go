package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// upstreams holds the HTTP clients to pods: h1Client for HTTP/1.1, net/http's Transport for
// HTTP/2. Their connections are HBONE streams to the pod's ztunnel, opened under the
// waypoint's identity and pooled by the clients (and the TLS connections under them by the
// hbone client), so that a request does not pay for a CONNECT.
//
// A pooled stream carries requests of many clients, so it carries no Forwarded header:
// each HTTP request carries its own client in Forwarded and X-Forwarded-For instead.
type upstreams struct {
	p  *Proxy
	h1 *h1Client
	h2 *http.Transport
}

func newUpstreams(p *Proxy) *upstreams {
	u := &upstreams{p: p}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, &dialError{err: err}
		}
		// The transport dials with a context that keeps the request's values: a
		// destination's connectTimeout travels in one.
		if d, ok := ctx.Value(connectTimeoutKey{}).(time.Duration); ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return u.dial(ctx, ap, netip.AddrPort{}, "", "")
	}
	u.h1 = newH1Client(dial)
	u.h2 = &http.Transport{
		DialContext:         dial,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Protocols:           new(http.Protocols),
		HTTP2:               &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 10 * time.Second},
	}
	u.h2.Protocols.SetUnencryptedHTTP2(true)
	return u
}

// connectTimeoutKey carries a destination's connect timeout in a request's context.
type connectTimeoutKey struct{}

func (u *upstreams) close() {
	u.h1.close()
	u.h2.CloseIdleConnections()
}

// dialError marks a failure to reach the endpoint: nothing of the request was sent, so it
// is always safe to retry.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dial opens a connection to the pod at addr: an HBONE stream to its ztunnel, or plain TCP
// when the pod is outside the mesh.
func (u *upstreams) dial(ctx context.Context, addr, forwarded netip.AddrPort, traceparent, baggage string) (hbone.HalfCloser, error) {
	p := u.p
	w, ok := p.cfg.State.Workload(addr.Addr())
	if !ok {
		return nil, &dialError{err: fmt.Errorf("no workload has address %s", addr.Addr())}
	}
	if w.GetTunnelProtocol() == configv1.TunnelProtocol_NONE {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return nil, &dialError{err: err}
		}
		return c.(*net.TCPConn), nil
	}
	ids, err := workloadIdentities(w, p.cfg.TrustDomain)
	if err != nil {
		return nil, &dialError{err: err}
	}
	s, err := p.client.Dial(ctx, hbone.Target{
		Source:      p.Identity(),
		Address:     netip.AddrPortFrom(addr.Addr(), hbone.Port),
		Identities:  ids,
		Authority:   addr,
		Forwarded:   forwarded,
		Traceparent: traceparent,
		Baggage:     baggage,
		Protocol:    tunnelProtocol(w),
	})
	if err != nil {
		return nil, &dialError{err: err}
	}
	return s, nil
}

// tunnelProtocol is how the pod's ztunnel is reached: HTTP/3 when the controller marked
// it HBONE_H3 (the client falls back to HTTP/2 by itself), else HTTP/2.
func tunnelProtocol(w *configv1.Workload) hbone.Protocol {
	if w.GetTunnelProtocol() == configv1.TunnelProtocol_HBONE_H3 {
		return hbone.ProtocolH3
	}
	return hbone.ProtocolH2
}

// workloadIdentities are the identities a pod may prove: its own.
func workloadIdentities(w *configv1.Workload, fallback spiffeid.TrustDomain) ([]spiffeid.ID, error) {
	id, err := identity.WorkloadIdentity(w, fallback)
	if err != nil {
		return nil, err
	}
	return []spiffeid.ID{id}, nil
}

func isDialError(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}
