package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
)

const (
	// maxMirrorsInFlight bounds the mirrored requests in flight; beyond it copies are dropped
	// (counted), so that a slow mirror cannot pile up memory or goroutines.
	maxMirrorsInFlight = 256
	// mirrorTimeout bounds one mirrored request.
	mirrorTimeout = 10 * time.Second
)

// mirror sends a copy of the request to each of the route's mirrors that draws it, fire and
// forget: on its own goroutine (owned by the Proxy, ended by Close), its answer discarded.
// Like Istio it marks the copy's authority with "-shadow". A request whose body was not held
// whole (it streamed past what retries buffer) is not mirrored.
func (ex *exchange) mirror(rt *route.Route, body *replayBody, port uint16) {
	p := ex.p
	var payload []byte
	if body != nil {
		body.mu.Lock()
		whole := body.eof && body.consumed == int64(len(body.buf))
		payload = body.buf
		body.mu.Unlock()
		if !whole {
			return
		}
	}
	for _, m := range rt.Mirrors {
		if m.Percent < 100 && rand.Float64()*100 >= m.Percent {
			continue
		}
		_, host, _ := strings.Cut(m.Service, "/")
		select {
		case p.mirrors <- struct{}{}:
		default:
			p.cfg.Metrics.mirrored.WithLabelValues(host, "dropped").Inc()
			continue
		}
		req := ex.mirrorRequest(payload)
		h2 := ex.h2 || ex.grpc
		if !p.background(func() {
			defer func() { <-p.mirrors }()
			result := "sent"
			if err := p.sendMirror(m, req, port, h2); err != nil {
				result = "failed"
				p.log.Debug("mirror failed", "mirror", m.Hostname, "error", err)
			}
			p.cfg.Metrics.mirrored.WithLabelValues(host, result).Inc()
		}) {
			<-p.mirrors
			return
		}
	}
}

// mirrorRequest copies the request as it would be forwarded, before any endpoint is known.
func (ex *exchange) mirrorRequest(payload []byte) *http.Request {
	in := ex.req
	out := in.Clone(context.Background())
	out.URL = &url.URL{Scheme: "http", Path: in.URL.Path, RawPath: in.URL.RawPath, RawQuery: in.URL.RawQuery}
	host := in.Host
	if host == "" {
		host = in.URL.Host
	}
	if h, port, ok := strings.Cut(host, ":"); ok {
		host = h + "-shadow:" + port
	} else {
		host += "-shadow"
	}
	out.Host = host
	out.RequestURI = ""
	stripHopByHop(out.Header)
	out.Header.Del("Expect")
	if ex.rt != nil {
		ex.rt.RequestHeaders.Apply(out.Header)
	}
	out.Body, out.ContentLength, out.GetBody = nil, 0, nil
	if len(payload) > 0 {
		out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(payload)), int64(len(payload))
	}
	return out
}

// sendMirror sends req to one endpoint of the mirror's Service, over h2c when the client spoke
// HTTP/2 or the mirror's port declares HTTP2 or GRPC, else HTTP/1.1.
func (p *Proxy) sendMirror(m route.Mirror, req *http.Request, reqPort uint16, h2 bool) error {
	ctx, cancel := context.WithTimeout(p.bg, mirrorTimeout)
	defer cancel()
	svc, ok := p.cfg.State.ServiceByName(m.Service)
	if !ok {
		return errNoMirror
	}
	port := uint16(m.Port)
	if port == 0 {
		port = reqPort
	}
	for _, pt := range svc.GetPorts() {
		if pt.GetServicePort() == uint32(port) {
			switch pt.GetAppProtocol() {
			case configv1.AppProtocol_HTTP2, configv1.AppProtocol_GRPC:
				h2 = true
			case configv1.AppProtocol_HTTP:
				h2 = h2 && strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
			}
		}
	}
	eps := p.cfg.State.Endpoints(svc, port)
	if len(m.Subset) > 0 {
		eps = inSubset(eps, m.Subset)
	}
	if len(eps) == 0 {
		return errNoMirror
	}
	ep := p.lb.pick(eps, nil, pickReq{shadow: true})
	defer p.lb.release(ep.addr)
	req = req.WithContext(ctx)
	req.URL.Host = ep.addr.String()
	var tr http.RoundTripper = p.up.h1
	if h2 {
		tr = p.up.h2
	}
	res, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
	return res.Body.Close()
}

var errNoMirror = mirrorError("mirror service has no endpoint")

type mirrorError string

func (e mirrorError) Error() string { return string(e) }

// background runs f on a goroutine that Close waits for; false once the Proxy is closed.
func (p *Proxy) background(f func()) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}
