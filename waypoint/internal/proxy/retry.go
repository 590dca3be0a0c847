package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"time"

	"ambit.dev/mesh/state"
	"ambit.dev/waypoint/internal/route"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// attempts sends the request, retrying per the route's policy, and returns the response.
func (ex *exchange) attempts(ctx context.Context, rt *route.Route, t target) (*http.Response, *exchange) {
	l := newRetryLoop(ex, rt, t)
	l.ctx, l.rctx = ctx, ex.requestContext(ctx, rt)
	l.body = ex.retryBody()
	if resp := l.acquire(); resp != nil {
		return resp, ex
	}
	defer l.endRetry()
	var tried []netip.AddrPort
	for n := 1; ; n++ {
		ex.attempt = n
		a := try{n: n}
		var resp *http.Response
		if a.ep, a.peers, resp = ex.endpoint(l.t, tried); resp != nil {
			return resp, ex
		}
		res, err := l.send(&a)
		replayable := l.body == nil || l.body.replayable()
		canRetry := n < l.maxAttempts
		if err != nil {
			f, resp := l.failed(&a, err, replayable)
			if resp != nil {
				return resp, ex
			}
			if f.again && canRetry && l.mayRetry() {
				tried = append(tried, a.ep.addr)
				if resp := l.wait(); resp != nil {
					return resp, ex
				}
				continue
			}
			ex.ep, ex.hasEP = a.ep, true
			return ex.local(f.code, f.reason), ex
		}
		l.report(&a, res.StatusCode)
		if l.retriable(res) && canRetry && replayable && l.mayRetry() {
			l.discard(&a, res)
			tried = append(tried, a.ep.addr)
			if resp := l.wait(); resp != nil {
				return resp, ex
			}
			continue
		}
		return l.deliver(&a, res), ex
	}
}

// retryLoop is one request's attempts: the limits its route sets and what it holds of the
// destination.
type retryLoop struct {
	ex          *exchange
	rt          *route.Route
	t           target
	retry       *route.Retry
	maxAttempts int
	backoff     time.Duration
	beTimeout   time.Duration // bounds each attempt; 0 for none
	// ctx is the client's; rctx bounds the whole request, retries included.
	ctx, rctx context.Context
	body      *replayBody // nil without a body
	dest      *destination
	inRetry   bool // a retry in flight holds the destination's retry budget
}

// try is one attempt at one endpoint.
type try struct {
	n     int
	ep    endpoint
	peers []state.Endpoint
	// ctx is the attempt's, bounded by the backend timeout; cancel ends it.
	ctx    context.Context
	cancel context.CancelFunc
}

// failure is what a failed attempt answers if it is not retried.
type failure struct {
	code   int
	reason string
	again  bool // the route lets this failure be retried
}

// newRetryLoop takes the limits of rt's retry policy, or the defaults (retries of connect
// failures only) without one.
func newRetryLoop(ex *exchange, rt *route.Route, t target) retryLoop {
	l := retryLoop{ex: ex, rt: rt, t: t, maxAttempts: 1 + defaultDialRetries, backoff: route.DefaultBackoff}
	if rt != nil {
		l.retry, l.beTimeout = rt.Retry, rt.BackendTimeout
	}
	if l.retry != nil {
		l.maxAttempts, l.backoff = 1+l.retry.Attempts, l.retry.Backoff
	}
	return l
}

// requestContext bounds the request, retries included, by the route's request timeout.
func (ex *exchange) requestContext(ctx context.Context, rt *route.Route) context.Context {
	if rt == nil || rt.RequestTimeout <= 0 {
		return ctx
	}
	rctx, cancel := context.WithTimeout(ctx, rt.RequestTimeout)
	ex.cleanup = append(ex.cleanup, cancel)
	return rctx
}

// retryBody keeps the request's body for replay on a retry; nil without a body.
func (ex *exchange) retryBody() *replayBody {
	if ex.req.Body == nil || ex.req.Body == http.NoBody || ex.req.ContentLength == 0 {
		return nil
	}
	return &replayBody{src: ex.req.Body, limit: ex.p.cfg.RetryBodyBytes}
}

// acquire takes a place in the destination's connection pool for the request; a non-nil
// response is the answer when there is none.
func (l *retryLoop) acquire() *http.Response {
	ex, p := l.ex, l.ex.p
	if l.dest = p.dest(l.t); l.dest == nil {
		return nil
	}
	release, err := l.dest.acquire(l.rctx, l.t.pol)
	switch {
	case errors.Is(err, errOverflow):
		ex.flags = flagOverflow
		p.cfg.Metrics.overflow(l.t.svcKey, "pending")
		return ex.local(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
	case err != nil:
		resp, _ := ex.timeoutOrGone(l.ctx)
		return resp
	}
	ex.cleanup = append(ex.cleanup, release)
	return nil
}

// mayRetry ends the retry in flight, if any, and reports whether the destination's retry
// budget lets another start; if so the new one holds it.
func (l *retryLoop) mayRetry() bool {
	l.endRetry()
	if l.dest == nil {
		return true
	}
	if !l.dest.tryRetry(l.t.pol) {
		l.ex.p.cfg.Metrics.overflow(l.t.svcKey, "retry_budget")
		return false
	}
	l.inRetry = true
	return true
}

// endRetry gives back the retry budget the retry in flight holds.
func (l *retryLoop) endRetry() {
	if l.inRetry {
		l.dest.endRetry()
		l.inRetry = false
	}
}

// send makes attempt a: the request, with the backend timeout and the destination's connect
// timeout, over the protocol the backend speaks.
func (l *retryLoop) send(a *try) (*http.Response, error) {
	ex := l.ex
	a.ctx, a.cancel = context.WithCancel(l.rctx)
	if l.beTimeout > 0 {
		a.ctx, a.cancel = context.WithTimeout(l.rctx, l.beTimeout)
	}
	if l.t.pol != nil && l.t.pol.ConnectTimeout > 0 {
		a.ctx = context.WithValue(a.ctx, connectTimeoutKey{}, l.t.pol.ConnectTimeout)
	}
	out := ex.outRequest(a.ctx, a.ep, l.body)
	l.t.reqHeaders.Apply(out.Header)
	if ex.upstreamH2() {
		return ex.p.up.h2.RoundTrip(out)
	}
	return ex.p.up.h1.RoundTrip(out)
}

// failed ends attempt a, which got no response, and classifies err. A non-nil response ends
// the request: the client went away, or the request timed out.
func (l *retryLoop) failed(a *try, err error, replayable bool) (failure, *http.Response) {
	ex := l.ex
	a.cancel()
	ex.p.lb.release(a.ep.addr)
	if l.ctx.Err() != nil {
		ex.p.lb.abandon(a.ep) // the client's leaving says nothing about the endpoint
	} else {
		l.report(a, 0)
	}
	ex.span.AddEvent("attempt failed", trace.WithAttributes(attribute.Int("attempt", a.n), attribute.String("endpoint", a.ep.addr.String()), attribute.String("error", err.Error())))
	retry := l.retry
	switch {
	case l.ctx.Err() != nil:
		ex.flags = flagDownstream
		return failure{}, ex.local(499, "client went away")
	case l.rctx.Err() != nil:
		ex.flags = flagTimeout
		return failure{}, ex.local(http.StatusGatewayTimeout, "upstream request timeout")
	case errors.Is(a.ctx.Err(), context.DeadlineExceeded): // a.cancel above makes Err non-nil whatever happened
		ex.flags = flagTimeout
		return failure{http.StatusGatewayTimeout, "upstream request timeout",
			retry != nil && retry.Codes[http.StatusGatewayTimeout] && replayable}, nil
	case isDialError(err):
		ex.flags = flagConnect
		return failure{http.StatusServiceUnavailable, "upstream connect error: " + err.Error(),
			replayable && (retry == nil || retry.ConnectFailure)}, nil
	default:
		ex.flags = flagReset
		return failure{http.StatusServiceUnavailable, "upstream reset before response: " + err.Error(),
			retry != nil && retry.Reset && replayable}, nil
	}
}

// report tells the balancer how a's endpoint did (status 0: no response) and logs its
// ejection.
func (l *retryLoop) report(a *try, status int) {
	p := l.ex.p
	if ejected := p.lb.result(a.ep.addr, status, a.peers, l.t.pol); ejected {
		p.log.Info("endpoint ejected", "endpoint", a.ep.addr.String(), "service", l.t.svcKey)
	}
}

// retriable reports whether the route retries res's status (or its gRPC status).
func (l *retryLoop) retriable(res *http.Response) bool {
	r := l.retry
	return r != nil && (r.Codes[res.StatusCode] || (len(r.GRPCCodes) > 0 && r.GRPCCodes[res.Header.Get("Grpc-Status")]))
}

// discard drops the response of attempt a, which is retried, and ends the attempt.
func (l *retryLoop) discard(a *try, res *http.Response) {
	l.ex.span.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", a.n), attribute.Int("status", res.StatusCode)))
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	a.cancel()
	l.ex.p.lb.release(a.ep.addr)
}

// wait waits the backoff before the next attempt. A non-nil response ends the request: it
// timed out, or the client went away, meanwhile.
func (l *retryLoop) wait() *http.Response {
	if sleep(l.rctx, l.backoff) != nil {
		resp, _ := l.ex.timeoutOrGone(l.ctx)
		return resp
	}
	return nil
}

// deliver makes res, attempt a's response, the answer: its endpoint is released when the
// exchange finishes, and the route's and backend's response edits, CORS headers and mirrors
// apply.
func (l *retryLoop) deliver(a *try, res *http.Response) *http.Response {
	ex, p, ep, rt := l.ex, l.ex.p, a.ep, l.rt
	ex.flags = flagNone
	ex.ep, ex.hasEP = ep, true
	ex.code = res.StatusCode
	ex.cleanup = append(ex.cleanup, a.cancel, func() { p.lb.release(ep.addr) })
	stripHopByHop(res.Header)
	if rt != nil {
		rt.ResponseHeaders.Apply(res.Header)
		l.t.respHeaders.Apply(res.Header)
		if ex.corsOrigin {
			corsHeaders(res.Header, rt.Cors, ex.req.Header.Get("Origin"))
		}
		if len(rt.Mirrors) > 0 {
			ex.mirror(rt, l.body, l.t.port)
		}
	}
	return res
}
