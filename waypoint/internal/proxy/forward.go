package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ambit.dev/mesh/authz"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Response flags, Envoy's, for access logs and the response_flags label.
const (
	flagNone           = "-"
	flagDenied         = "UAEX" // denied by authorization
	flagNoRoute        = "NR"   // no route matched, or the backend Service does not exist
	flagNoHealthy      = "UH"   // the Service has no endpoint
	flagTimeout        = "UT"   // route timeout
	flagConnect        = "UF"   // could not connect to the endpoint
	flagReset          = "UC"   // the upstream connection ended before the response
	flagFaultAbort     = "FI"   // aborted by fault injection
	flagFaultDelay     = "DI"   // delayed by fault injection
	flagDownstream     = "DC"   // the client went away
	flagOverflow       = "UO"   // the destination's connection pool or retry budget is full
	flagBadRequest     = "DPE"  // the request was malformed
	defaultDialRetries = 2      // retries of connect failures on a route without a retry policy
)

// exchange is one HTTP request's way through the waypoint, and what telemetry reports
// about it once the response is written.
type exchange struct {
	p     *Proxy
	d     *downstream
	req   *http.Request
	start time.Time
	span  trace.Span
	grpc  bool
	h2    bool
	route string
	rt    *route.Route // the route that matched, if any
	// corsOrigin: the request comes from an origin the route's CORS policy allows.
	corsOrigin bool
	backend    string // destination service hostname
	ep         endpoint
	hasEP      bool
	attempt    int
	flags      string
	code       int
	reason     string
	reqBody    *countingReader
	// backendProto is what the backend Service declares for its port; it can override
	// the client's protocol towards the pod.
	backendProto configv1.AppProtocol
	cleanup      []func()
	once         sync.Once
}

// handle runs the pipeline for one request: authorization, routing, faults, then attempts
// with retries. It returns the response to send; the caller streams its body and then
// calls ex.finish.
func (p *Proxy) handle(ctx context.Context, d *downstream, req *http.Request, h2 bool) (*http.Response, *exchange) {
	ex := &exchange{p: p, d: d, req: req, start: time.Now(), h2: h2, flags: flagNone,
		grpc: strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")}
	ctx, ex.span = p.startSpan(ctx, d, req)
	if req.Body != nil && req.Body != http.NoBody {
		ex.reqBody = &countingReader{r: req.Body}
		req.Body = ex.reqBody
	}
	if resp := ex.normalize(); resp != nil {
		return resp, ex
	}

	// (a) L7 authorization against the original client's identity.
	snap := p.snap.Load()
	pols := snap.gateway
	port := uint32(d.authority.Port())
	if d.svc != nil {
		pols = append(pols[:len(pols):len(pols)], snap.byService[d.svc.GetNamespace()+"/"+d.svc.GetName()]...)
		port = targetPort(d.svc, d.authority.Port())
	}
	dec := authz.Evaluate(pols, authz.Request{
		Principal: d.peer.String(), Namespace: d.peerNS, Source: d.client.Addr(), Port: port,
		HTTP: &authz.HTTP{Method: req.Method, Path: req.URL.Path, Headers: req.Header},
	})
	if !dec.Allow {
		ex.flags = flagDenied
		ex.reason = dec.Reason
		return ex.local(http.StatusForbidden, "RBAC: access denied: "+dec.Reason), ex
	}

	// (b) routing: the destination Service's routes, else the Service itself.
	parent, parentPort, table := p.parentRoutes(d)
	var rt *route.Route
	if table != nil && len(table.Routes) > 0 { // a table of TCP routes only leaves HTTP alone
		if rt = table.MatchFrom(parentPort, req, p.source(d)); rt == nil {
			ex.flags = flagNoRoute
			return ex.local(http.StatusNotFound, "no route matched: "+parent+" has no HTTPRoute rule for "+req.Method+" "+req.URL.Path), ex
		}
		ex.route, ex.rt = rt.Name, rt
	}
	if rt != nil && rt.Fault != nil {
		if f := rt.Fault; f.DelayPercent > 0 && rand.Float64()*100 < f.DelayPercent {
			ex.flags = flagFaultDelay
			if err := sleep(ctx, f.Delay); err != nil {
				ex.flags = flagDownstream
				return ex.local(499, "client went away"), ex
			}
		}
		if f := rt.Fault; f.AbortPercent > 0 && rand.Float64()*100 < f.AbortPercent {
			ex.flags = flagFaultAbort
			if f.AbortGRPC {
				return ex.grpcStatus(f.AbortGRPCStatus, "fault filter abort"), ex
			}
			return ex.local(f.AbortStatus, "fault filter abort"), ex
		}
	}
	if rt != nil && rt.Cors != nil {
		resp, allowed := ex.cors(rt.Cors)
		if resp != nil {
			return resp, ex
		}
		ex.corsOrigin = allowed
	}
	if rt != nil && rt.Redirect != nil {
		return ex.redirect(rt), ex
	}
	if rt != nil && rt.DirectResponse != nil {
		return ex.direct(rt.DirectResponse), ex
	}
	t := target{svcKey: parent, port: parentPort}
	if rt != nil {
		b, ok := rt.PickBackend()
		if !ok {
			ex.flags = flagNoRoute
			return ex.local(http.StatusInternalServerError, "route "+rt.Name+" has no backend with a weight above 0"), ex
		}
		if b.Service != "" {
			t.svcKey, t.port = b.Service, uint16(b.Port)
			if t.port == 0 {
				t.port = parentPort
			}
			t.subset, t.subsetName = b.Subset, b.SubsetName
			t.pol = b.Policy.ForPort(t.port)
			t.reqHeaders, t.respHeaders = b.RequestHeaders, b.ResponseHeaders
		}
	}
	if t.svcKey == "" {
		if d.wl == nil {
			ex.flags = flagNoRoute
			return ex.local(http.StatusServiceUnavailable, "no healthy upstream: unknown destination "+d.authority.String()), ex
		}
		t.direct = endpoint{addr: d.authority, wl: d.wl}
	}
	return ex.attempts(ctx, rt, t)
}

// target is where a request goes: a Service port, or one pod.
type target struct {
	svcKey string
	port   uint16
	direct endpoint
	// subset limits the Service's endpoints to workloads with these labels.
	subset     map[string]string
	subsetName string
	// pol is the destination's traffic policy; nil for the defaults.
	pol *route.Policy
	// reqHeaders and respHeaders are the backend's own header edits.
	reqHeaders, respHeaders *route.HeaderOps
}

// dest is the waypoint's state for the target's destination; nil for a pod.
func (p *Proxy) dest(t target) *destination {
	if t.svcKey == "" {
		return nil
	}
	// One per Service port and subset, as Envoy has a cluster per port and subset.
	return p.dests.get(t.svcKey + "|" + strconv.Itoa(int(t.port)) + "|" + t.subsetName)
}

// parentRoutes finds the Service whose routes apply: the destination Service, or for a
// request addressed to a pod, the Service with routes that selects the pod on that port.
func (p *Proxy) parentRoutes(d *downstream) (string, uint16, *route.Table) {
	routes := *p.routes.Load()
	if d.svc != nil {
		k := d.svc.GetNamespace() + "/" + d.svc.GetHostname()
		return k, d.authority.Port(), routes[k]
	}
	if d.wl == nil {
		return "", 0, nil
	}
	keys := make([]string, 0, len(d.wl.GetServices()))
	for k := range d.wl.GetServices() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		t := routes[k]
		if t == nil {
			continue
		}
		for _, pt := range d.wl.GetServices()[k].GetPorts() {
			tp := pt.GetTargetPort()
			if tp == 0 {
				tp = pt.GetServicePort()
			}
			if tp == uint32(d.authority.Port()) {
				return k, uint16(pt.GetServicePort()), t
			}
		}
	}
	return "", 0, nil
}

// source is what a route match may know of the client: its identity's namespace, and its
// workload's labels when the mesh knows its address.
func (p *Proxy) source(d *downstream) route.Source {
	src := route.Source{Namespace: d.peerNS}
	// The labels count only when the workload at the client's address has the identity the
	// client proved, so that an address alone cannot borrow another workload's labels.
	if w, ok := p.cfg.State.Workload(d.client.Addr()); ok && w.GetNamespace() == d.peerNS &&
		d.peer.Path() == "/ns/"+w.GetNamespace()+"/sa/"+w.GetServiceAccount() {
		src.Labels = w.GetLabels()
	}
	return src
}

func targetPort(svc *configv1.Service, port uint16) uint32 {
	for _, pt := range svc.GetPorts() {
		if pt.GetServicePort() == uint32(port) && pt.GetTargetPort() != 0 {
			return pt.GetTargetPort()
		}
	}
	return uint32(port)
}

// normalize refuses what the waypoint will not forward and cleans the path, so that
// policy and routes see the path the application will act on ("/a/../admin" is "/admin").
func (ex *exchange) normalize() *http.Response {
	req := ex.req
	switch {
	case req.Method == http.MethodConnect:
		ex.flags = flagBadRequest
		return ex.local(http.StatusBadRequest, "CONNECT is not supported inside the mesh tunnel")
	case req.Method == http.MethodOptions && req.RequestURI == "*":
		return nil
	case req.URL.Path == "" || req.URL.Path[0] != '/':
		ex.flags = flagBadRequest
		return ex.local(http.StatusBadRequest, "request path must start with /")
	}
	clean := path.Clean(req.URL.Path)
	if strings.HasSuffix(req.URL.Path, "/") && clean != "/" {
		clean += "/"
	}
	if clean != req.URL.Path {
		req.URL.Path, req.URL.RawPath = clean, ""
	}
	return nil
}

func (ex *exchange) timeoutOrGone(ctx context.Context) (*http.Response, *exchange) {
	if ctx.Err() != nil {
		ex.flags = flagDownstream
		return ex.local(499, "client went away"), ex
	}
	ex.flags = flagTimeout
	return ex.local(http.StatusGatewayTimeout, "upstream request timeout"), ex
}

// endpoint resolves t to one pod. A non-nil response is the answer when there is none.
func (ex *exchange) endpoint(t target, tried []netip.AddrPort) (endpoint, []state.Endpoint, *http.Response) {
	p := ex.p
	if t.svcKey == "" {
		p.lb.pick([]state.Endpoint{{Workload: t.direct.wl, Addr: t.direct.addr}}, nil, pickReq{})
		ex.backend = ""
		return t.direct, nil, nil
	}
	_, host, _ := strings.Cut(t.svcKey, "/")
	ex.backend = host
	svc, ok := p.cfg.State.ServiceByName(t.svcKey)
	if !ok {
		ex.flags = flagNoRoute
		return endpoint{}, nil, ex.local(http.StatusServiceUnavailable, "no healthy upstream: service "+host+" does not exist")
	}
	for _, pt := range svc.GetPorts() {
		if pt.GetServicePort() == uint32(t.port) {
			ex.backendProto = pt.GetAppProtocol()
		}
	}
	eps := p.cfg.State.Endpoints(svc, t.port)
	if len(t.subset) > 0 {
		eps = inSubset(eps, t.subset)
		if len(eps) == 0 {
			ex.flags = flagNoHealthy
			return endpoint{}, nil, ex.local(http.StatusServiceUnavailable, fmt.Sprintf("no healthy upstream: subset %s of service %s has no endpoint for port %d", t.subsetName, host, t.port))
		}
	}
	if len(eps) == 0 {
		ex.flags = flagNoHealthy
		return endpoint{}, nil, ex.local(http.StatusServiceUnavailable, fmt.Sprintf("no healthy upstream: service %s has no endpoint for port %d", host, t.port))
	}
	pr := pickReq{pol: t.pol}
	if pol := t.pol; pol != nil {
		switch {
		case pol.HashHeader != "":
			if v := ex.req.Header.Values(pol.HashHeader); len(v) > 0 {
				pr.hashKey, pr.hasKey = strings.Join(v, ","), true
			}
		case pol.HashSourceIP:
			pr.hashKey, pr.hasKey = ex.d.clientIP, true
		case pol.HashQuery != "":
			if q := ex.req.URL.Query(); q.Has(pol.HashQuery) {
				pr.hashKey, pr.hasKey = q.Get(pol.HashQuery), true
			}
		}
		if pol.LB == configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN {
			pr.rr = &p.dest(t).rr
		}
	}
	return p.lb.pick(eps, tried, pr), eps, nil
}

// inSubset keeps the endpoints whose workload carries every label of subset.
func inSubset(eps []state.Endpoint, subset map[string]string) []state.Endpoint {
	out := make([]state.Endpoint, 0, len(eps))
	for _, e := range eps {
		ok := true
		for k, v := range subset {
			if lv, has := e.Workload.GetLabels()[k]; !has || lv != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, e)
		}
	}
	return out
}

// outRequest makes the request for one attempt to ep.
func (ex *exchange) outRequest(ctx context.Context, ep endpoint, body *replayBody) *http.Request {
	in := ex.req
	out := in.Clone(ctx)
	out.URL = &url.URL{Scheme: "http", Host: ep.addr.String(), Path: in.URL.Path, RawPath: in.URL.RawPath, RawQuery: in.URL.RawQuery}
	if out.Host == "" {
		out.Host = in.URL.Host
	}
	if rt := ex.rt; rt != nil {
		if rw := rt.Rewrite; rw != nil {
			if rw.Path != "" {
				out.URL.Path, out.URL.RawPath = rt.RewritePath(in.URL.Path, rw.Path, rw.FullPath), ""
			}
			if rw.Authority != "" {
				out.Host = rw.Authority
			}
		}
		rt.RequestHeaders.Apply(out.Header)
	}
	out.RequestURI = ""
	out.Close = false
	te := in.Header.Get("Te")
	stripHopByHop(out.Header)
	if ex.h2 && strings.EqualFold(te, "trailers") {
		out.Header.Set("Te", "trailers")
	}
	out.Header.Del("Expect")
	out.Header.Add("Forwarded", ex.d.forwarded)
	if prior := out.Header.Get("X-Forwarded-For"); prior != "" {
		out.Header.Set("X-Forwarded-For", prior+", "+ex.d.clientIP)
	} else {
		out.Header.Set("X-Forwarded-For", ex.d.clientIP)
	}
	ex.p.injectTrace(ctx, ex.span, out.Header, ex.d)
	if body != nil {
		out.Body = body.reader()
		out.ContentLength = in.ContentLength
	} else {
		out.Body = nil
		out.ContentLength = 0
	}
	out.GetBody = nil
	return out
}

// grpcStatus answers with a trailers-only gRPC status.
func (ex *exchange) grpcStatus(code int, msg string) *http.Response {
	ex.code = http.StatusOK
	if ex.reason == "" {
		ex.reason = msg
	}
	h := http.Header{}
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", url.PathEscape(msg))
	h.Set("Content-Length", "0")
	return &http.Response{StatusCode: http.StatusOK, ProtoMajor: 2, Header: h, Body: http.NoBody, Request: ex.req}
}

// direct answers with a route's fixed response.
func (ex *exchange) direct(dr *route.DirectResponse) *http.Response {
	ex.code = dr.Status
	h := http.Header{}
	h.Set("Content-Length", strconv.Itoa(len(dr.Body)))
	if len(dr.Body) > 0 {
		h.Set("Content-Type", "text/plain; charset=utf-8")
	}
	return &http.Response{StatusCode: dr.Status, ProtoMajor: 1, ProtoMinor: 1, Header: h,
		Body: io.NopCloser(bytes.NewReader(dr.Body)), ContentLength: int64(len(dr.Body)), Request: ex.req}
}

// redirect answers with the Location of rt's redirect: the request's URL with its parts
// replaced.
func (ex *exchange) redirect(rt *route.Route) *http.Response {
	rd := rt.Redirect
	u := url.URL{Scheme: "http", Host: ex.req.Host, Path: ex.req.URL.Path, RawQuery: ex.req.URL.RawQuery}
	if rd.Scheme != "" {
		u.Scheme = rd.Scheme
	}
	if rd.Authority != "" {
		u.Host = rd.Authority
	}
	u.Host = redirectHost(u.Host, ex.req.Host, u.Scheme, rd)
	if rd.Path != "" {
		u.Path = rt.RewritePath(ex.req.URL.Path, rd.Path, !rd.ReplacePrefix)
	}
	resp := ex.local(rd.Code, "")
	resp.Header.Set("Location", u.String())
	return resp
}

// redirectHost is the host[:port] of a redirect's Location: host (the authority or the
// request's) with the port rd asks for. A derived port that is the scheme's default is left
// out.
func redirectHost(host, reqHost, scheme string, rd *route.Redirect) string {
	name, port := host, ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		name, port = h, p
	}
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case rd.DerivePort == configv1.Redirect_FROM_REQUEST_PORT:
		port = ""
		if _, p, err := net.SplitHostPort(reqHost); err == nil {
			port = p
		}
	case rd.DerivePort == configv1.Redirect_FROM_PROTOCOL_DEFAULT:
		port = ""
	}
	if rd.DerivePort != configv1.Redirect_KEEP && (scheme == "http" && port == "80" || scheme == "https" && port == "443") {
		port = ""
	}
	if port == "" {
		if strings.Contains(name, ":") { // an IPv6 literal
			return "[" + strings.Trim(name, "[]") + "]"
		}
		return name
	}
	return net.JoinHostPort(strings.Trim(name, "[]"), port)
}

// hopByHop are the headers that belong to one connection (RFC 9110 §7.6.1).
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func stripHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopByHop {
		h.Del(k)
	}
}

// local makes an answer of the waypoint's own. gRPC clients get a trailers-only gRPC
// status, which their libraries report better than an HTTP error.
func (ex *exchange) local(code int, reason string) *http.Response {
	ex.code = code
	if ex.reason == "" {
		ex.reason = reason
	}
	h := http.Header{}
	body := statusText(code, reason)
	if code == 499 {
		body = ""
	}
	if ex.grpc && ex.h2 {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcCode(code)))
		h.Set("Grpc-Message", url.PathEscape(strings.TrimSpace(body)))
		return &http.Response{StatusCode: http.StatusOK, ProtoMajor: 2, Header: h, Body: http.NoBody, Request: ex.req, ContentLength: 0}
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{StatusCode: code, ProtoMajor: 1, ProtoMinor: 1, Header: h,
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: ex.req}
}

// grpcCode maps the waypoint's statuses as gRPC's HTTP mapping does.
func grpcCode(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusGatewayTimeout:
		return 4 // DEADLINE_EXCEEDED
	case 499:
		return 1 // CANCELLED
	}
	return 14 // UNAVAILABLE
}

// finish reports the exchange once its response has been written (respBytes of body).
func (ex *exchange) finish(respBytes int64, err error) {
	ex.once.Do(func() {
		for _, f := range ex.cleanup {
			f()
		}
		if err != nil && ex.flags == flagNone {
			ex.flags = flagDownstream
		}
		var reqBytes int64
		if ex.reqBody != nil {
			reqBytes = ex.reqBody.n.Load()
		}
		dur := time.Since(ex.start)
		ex.p.cfg.Metrics.request(ex, reqBytes, respBytes, dur)
		if ex.span.IsRecording() {
			ex.span.SetAttributes(attribute.Int("http.response.status_code", ex.code), attribute.String("ambit.response_flags", ex.flags))
			if ex.code >= 500 || err != nil {
				ex.span.SetStatus(codes.Error, ex.reason)
			}
		}
		ex.span.End()
		if !ex.p.cfg.AccessLog.Enabled(context.Background(), slog.LevelInfo) {
			return
		}
		ep := ""
		if ex.hasEP {
			ep = ex.ep.addr.String()
		}
		// Typed attributes, not key-value pairs: nothing boxed into an interface, and the
		// record's overflow allocated once.
		ex.p.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "request",
			slog.String("method", ex.req.Method), slog.String("path", ex.req.URL.Path), slog.String("authority", ex.req.Host),
			slog.String("protocol", ex.protocol()), slog.Int("status", ex.code), slog.String("flags", ex.flags),
			slog.String("reason", ex.reason), slog.String("src", ex.d.client.String()), slog.String("src_principal", ex.d.peer.String()),
			slog.String("dst", ex.d.authority.String()), slog.String("dst_service", ex.backend), slog.String("route", ex.route),
			slog.String("endpoint", ep), slog.Int("attempts", ex.attempt), slog.Int64("bytes_received", reqBytes),
			slog.Int64("bytes_sent", respBytes), slog.String("duration", dur.String()),
			slog.String("trace_id", ex.span.SpanContext().TraceID().String()), slog.String("err", errString(err)))
	})
}

// upstreamH2 says whether to speak h2c to the pod: as the client did, unless the backend
// port declares otherwise (HTTP: HTTP/1.1 only, except for gRPC; HTTP2 or GRPC: h2c).
func (ex *exchange) upstreamH2() bool {
	switch ex.backendProto {
	case configv1.AppProtocol_HTTP:
		return ex.grpc
	case configv1.AppProtocol_HTTP2, configv1.AppProtocol_GRPC:
		return true
	}
	return ex.h2
}

func (ex *exchange) protocol() string {
	if ex.grpc {
		return "grpc"
	}
	return "http"
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// countingReader counts the bytes read through it. The transport reads on its own
// goroutine, so the counts are atomic.
type countingReader struct {
	r   io.ReadCloser
	n   atomic.Int64
	eof atomic.Bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err == io.EOF {
		c.eof.Store(true)
	}
	return n, err
}

// complete reports whether the body was read to its end (of length cl, -1 if unknown).
func (c *countingReader) complete(cl int64) bool {
	return c.eof.Load() || (cl >= 0 && c.n.Load() == cl)
}

func (c *countingReader) Close() error { return c.r.Close() }

// replayBody keeps the first limit bytes of a request body so that an attempt can be
// retried. Each attempt reads through its own reader; a reader of an earlier attempt, which
// a transport may still hold, fails instead of stealing bytes from the current one.
type replayBody struct {
	mu       sync.Mutex
	srcMu    sync.Mutex
	src      io.ReadCloser
	limit    int
	buf      []byte
	consumed int64 // bytes read from src
	eof      bool
	gen      int
}

var errStaleAttempt = errors.New("request body belongs to a later attempt")

func (b *replayBody) reader() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	return &replayReader{b: b, gen: b.gen}
}

// replayable reports whether everything read so far is held, so a new attempt can resend it.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.consumed == int64(len(b.buf))
}

type replayReader struct {
	b   *replayBody
	gen int
	pos int64
}

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	for {
		b.mu.Lock()
		switch {
		case r.gen != b.gen:
			b.mu.Unlock()
			return 0, errStaleAttempt
		case r.pos < b.consumed:
			if r.pos >= int64(len(b.buf)) {
				b.mu.Unlock()
				return 0, errors.New("request body too long to replay")
			}
			n := copy(p, b.buf[r.pos:])
			r.pos += int64(n)
			b.mu.Unlock()
			return n, nil
		case b.eof:
			b.mu.Unlock()
			return 0, io.EOF
		}
		b.mu.Unlock()
		// The source is read without holding mu, so that replayable never waits for a
		// client that is slow to send; srcMu keeps a stale attempt's read from
		// interleaving with the current one's.
		b.srcMu.Lock()
		b.mu.Lock()
		if r.pos != b.consumed || r.gen != b.gen || b.eof {
			b.mu.Unlock()
			b.srcMu.Unlock()
			continue
		}
		b.mu.Unlock()
		n, err := b.src.Read(p)
		b.mu.Lock()
		if n > 0 {
			if len(b.buf)+n <= b.limit && b.consumed == int64(len(b.buf)) {
				b.buf = append(b.buf, p[:n]...)
			}
			b.consumed += int64(n)
			r.pos += int64(n)
		}
		if errors.Is(err, io.EOF) {
			b.eof = true
		}
		b.mu.Unlock()
		b.srcMu.Unlock()
		return n, err
	}
}

func (r *replayReader) Close() error { return nil }
