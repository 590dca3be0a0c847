// Package proxy is the waypoint's data path: it terminates the HBONE streams ztunnels send
// to the waypoint, tells HTTP/1.1, HTTP/2 (h2c) and opaque TCP apart, and for HTTP applies,
// per request, L7 authorization, the destination Service's routes (matches, weighted
// backends, timeouts, retries, faults), outlier ejection and least-request balancing, then
// forwards over HBONE to the chosen pod under the waypoint's own identity.
//
// One file per concern: sniff.go (protocol detection), http1.go and h2.go (the two
// downstream codecs), forward.go (the per-request pipeline), upstream.go (HBONE transports
// to pods), balancer.go (least request and outlier ejection), l4.go (pass-through),
// metrics.go and trace.go (telemetry).
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/revoke"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/waypoint/internal/route"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"
)

// Defaults of Config.
const (
	DefaultMaxHeaderBytes    = 32 << 10
	DefaultSniffTimeout      = time.Second
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultConsecutive5xx    = 5
	DefaultEjectionTime      = 30 * time.Second
	DefaultMaxEjectedPercent = 50
	// DefaultRetryBodyBytes is how much of a request body is kept for replay on a retry; a
	// request whose body is longer is retried only when its attempt failed to connect.
	DefaultRetryBodyBytes = 64 << 10
)

// Config configures a Proxy. State, Certificate, Bundle and either Identity or
// Namespace/Name are required.
type Config struct {
	// State is the mesh config the controller pushed (or a test filled).
	State *state.State
	// Namespace and Name are the Gateway this waypoint serves; the Waypoint resource of that
	// name supplies the identity. Identity is used until it arrives (or instead of it, when
	// the Waypoint names none).
	Namespace, Name string
	Identity        spiffeid.ID
	TrustDomain     spiffeid.TrustDomain
	// Certificate returns the SVID for an identity (an identity.Manager's method fits).
	Certificate func(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error)
	// Bundle holds the mesh's trust anchors.
	Bundle x509bundle.Source
	// HBONE tunes the client connections to pods; DialContext, if set, opens their TCP.
	HBONE       hbone.ConnConfig
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxHeaderBytes bounds a request's header block; larger requests get 431.
	MaxHeaderBytes int
	// SniffTimeout is how long a stream to a TCP port may stay silent before it is passed
	// through as opaque TCP (server-first protocols); ports declared HTTP wait indefinitely.
	SniffTimeout time.Duration
	// IdleTimeout closes a downstream HTTP connection without requests for this long.
	IdleTimeout time.Duration
	// Outlier ejection: Consecutive5xx failures in a row (5xx answers, connect failures,
	// resets) eject an endpoint for EjectionTime times the number of times it was ejected,
	// never more than MaxEjectedPercent of a service's endpoints at once.
	Consecutive5xx    int
	EjectionTime      time.Duration
	MaxEjectedPercent int
	RetryBodyBytes    int
	Logger            *slog.Logger
	// AccessLog receives one record per request and per opaque TCP connection; nil means
	// Logger. A logger that is not enabled at info costs nothing: the records are not made.
	AccessLog *slog.Logger
	Metrics   *Metrics
	// Tracer makes the request spans; nil means no tracing.
	Tracer trace.TracerProvider
	// Now is the clock for ejection periods; nil means time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.State == nil:
		return c, errors.New("waypoint proxy: State is required")
	case c.Certificate == nil:
		return c, errors.New("waypoint proxy: Certificate is required")
	case c.Bundle == nil:
		return c, errors.New("waypoint proxy: Bundle is required")
	case c.Identity.IsZero() && (c.Namespace == "" || c.Name == ""):
		return c, errors.New("waypoint proxy: Identity or Namespace and Name are required")
	}
	if c.TrustDomain.IsZero() {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
		if !c.Identity.IsZero() {
			c.TrustDomain = c.Identity.TrustDomain()
		}
	}
	if c.Identity.IsZero() {
		id, err := identity.WorkloadID(c.TrustDomain, c.Namespace, c.Name)
		if err != nil {
			return c, fmt.Errorf("waypoint proxy: identity: %w", err)
		}
		c.Identity = id
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.SniffTimeout <= 0 {
		c.SniffTimeout = DefaultSniffTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Consecutive5xx <= 0 {
		c.Consecutive5xx = DefaultConsecutive5xx
	}
	if c.EjectionTime <= 0 {
		c.EjectionTime = DefaultEjectionTime
	}
	if c.MaxEjectedPercent <= 0 {
		c.MaxEjectedPercent = DefaultMaxEjectedPercent
	}
	if c.RetryBodyBytes <= 0 {
		c.RetryBodyBytes = DefaultRetryBodyBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// Proxy is the waypoint's data path. It is an hbone.Handler; pair it with CheckAuthority
// in an hbone.ServerConfig.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	spans  bool // the tracer records spans (not Go's no-op provider)
	client *hbone.Client
	up     *upstreams
	lb     *balancer
	dests  destinations
	// mirrors bounds the mirrored requests in flight; bg ends them on Close.
	mirrors  chan struct{}
	bg       context.Context
	bgCancel context.CancelFunc

	mu     sync.Mutex // serializes Apply
	routes atomic.Pointer[map[string]*route.Table]
	snap   atomic.Pointer[snapshot]

	// rev closes the downstream streams of identities that leave the mesh (revoke.go).
	rev *revoke.Tracker

	// conns tracks the downstream streams being served, for Close.
	connMu sync.Mutex
	conns  map[*hbone.Stream]struct{}
	closed bool
	wg     sync.WaitGroup
}

// snapshot is what every request reads, rebuilt after each config change.
type snapshot struct {
	id spiffeid.ID
	// gateway are the policies that target this waypoint's Gateway; byService those that
	// target a Service, by "<namespace>/<name>".
	gateway   []*configv1.Authorization
	byService map[string][]*configv1.Authorization
}

// New validates cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, tracer: cfg.Tracer.Tracer("ambit.dev/waypoint"), conns: map[*hbone.Stream]struct{}{}}
	_, noSpans := cfg.Tracer.(noop.TracerProvider)
	p.spans = !noSpans
	p.client, err = hbone.NewClient(hbone.ClientConfig{ConnConfig: cfg.HBONE, DialContext: cfg.DialContext, Certificate: cfg.Certificate, Bundle: cfg.Bundle})
	if err != nil {
		return nil, err
	}
	p.up = newUpstreams(p)
	p.lb = newBalancer(cfg.Consecutive5xx, cfg.EjectionTime, cfg.MaxEjectedPercent, cfg.Now)
	p.mirrors = make(chan struct{}, maxMirrorsInFlight)
	p.bg, p.bgCancel = context.WithCancel(context.Background())
	empty := map[string]*route.Table{}
	p.routes.Store(&empty)
	p.rebuild()
	cfg.State.OnChange(p.rebuild)
	p.rev = p.newRevocations() // after rebuild's watcher: it reads the identity rebuild sets
	return p, nil
}

// Identity is the identity the waypoint proves: its Waypoint resource's, or the default.
func (p *Proxy) Identity() spiffeid.ID { return p.snap.Load().id }

func (p *Proxy) rebuild() {
	s := &snapshot{id: p.cfg.Identity, byService: map[string][]*configv1.Authorization{}}
	if p.cfg.Namespace != "" {
		if wp, ok := p.cfg.State.Waypoint(p.cfg.Namespace + "/" + p.cfg.Name); ok && wp.GetIdentity() != "" {
			if id, err := spiffeid.FromString(wp.GetIdentity()); err == nil {
				s.id = id
			}
		}
	}
	for _, a := range p.cfg.State.Authorizations() {
		for _, t := range a.GetTargetRefs() {
			switch t.GetKind() {
			case "Gateway":
				if a.GetNamespace() == p.cfg.Namespace && t.GetName() == p.cfg.Name {
					s.gateway = append(s.gateway, a)
				}
			case "Service":
				k := a.GetNamespace() + "/" + t.GetName()
				s.byService[k] = append(s.byService[k], a)
			}
		}
	}
	p.snap.Store(s)
}

// Apply validates and installs one xDS batch: RouteConfigs are compiled (an invalid one
// rejects the whole batch, naming the field), everything is handed to the State.
func (p *Proxy) Apply(typeURL string, upserts map[string]proto.Message, removals []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if typeURL != configv1.RouteConfigTypeURL {
		return p.cfg.State.Apply(typeURL, upserts, removals)
	}
	next := map[string]*route.Table{}
	for k, v := range *p.routes.Load() {
		next[k] = v
	}
	for _, name := range removals {
		delete(next, name)
	}
	for name, m := range upserts {
		rc, ok := m.(*configv1.RouteConfig)
		if !ok {
			return fmt.Errorf("resource %s: %T is not a RouteConfig", name, m)
		}
		t, err := route.Compile(name, rc)
		if err != nil {
			return err
		}
		next[name] = t
	}
	if err := p.cfg.State.Apply(typeURL, upserts, removals); err != nil {
		return err
	}
	p.routes.Store(&next)
	return nil
}

// Routes returns the compiled route tables, for /config_dump.
func (p *Proxy) Routes() map[string]*route.Table { return *p.routes.Load() }

// CheckAuthority is the waypoint's anti-spoofing check: the CONNECT authority must be a
// Service VIP or a workload address bound to this waypoint.
func (p *Proxy) CheckAuthority(_ context.Context, r *hbone.Request) error {
	id := p.Identity().String()
	// A waypoint's own pod (this one or another replica of the Gateway) is never a
	// destination: the tunnel would come straight back in, once per hop.
	if w, ok := p.cfg.State.Workload(r.Authority.Addr()); ok {
		if wid, err := identity.WorkloadIdentity(w, p.cfg.TrustDomain); err == nil && wid.String() == id {
			return fmt.Errorf("self call refused: %s is waypoint %s itself", r.Authority, id)
		}
	}
	if svc, ok := p.cfg.State.Service(r.Authority.Addr()); ok {
		if svc.GetWaypoint().GetIdentity() == id {
			return nil
		}
		// A service-account or namespace waypoint gets a Service's traffic when ztunnel
		// picked an endpoint bound to it.
		for _, ep := range p.cfg.State.Endpoints(svc, r.Authority.Port()) {
			if ep.Workload.GetWaypoint().GetIdentity() == id {
				return nil
			}
		}
		return fmt.Errorf("service %s/%s is not bound to waypoint %s", svc.GetNamespace(), svc.GetName(), id)
	}
	if w, ok := p.cfg.State.Workload(r.Authority.Addr()); ok {
		if w.GetWaypoint().GetIdentity() == id {
			return nil
		}
		return fmt.Errorf("workload %s/%s is not bound to waypoint %s", w.GetNamespace(), w.GetName(), id)
	}
	return fmt.Errorf("authority %s is no service or workload this waypoint knows", r.Authority)
}

// downstream is what the waypoint knows about one tunnelled connection.
type downstream struct {
	peer      spiffeid.ID
	peerNS    string
	client    netip.AddrPort // original client: Forwarded, else the tunnel's peer address
	authority netip.AddrPort
	svc       *configv1.Service  // destination Service, when the authority is a VIP
	wl        *configv1.Workload // destination workload, when the authority is a pod
	src       *configv1.Workload // the client's workload, for telemetry
	trace     string             // traceparent of the CONNECT
	baggage   string
	// clientIP and forwarded are client's address and its Forwarded element (for="ip:port"),
	// made once for all the connection's requests.
	clientIP, forwarded string
	// series is the request metrics of this connection's last request (Metrics.series).
	series atomic.Pointer[requestSeries]
}

// ServeHBONE serves one tunnelled connection.
func (p *Proxy) ServeHBONE(ctx context.Context, r *hbone.Request) {
	d := &downstream{peer: r.Peer, client: r.Forwarded, authority: r.Authority, trace: r.Traceparent, baggage: r.Baggage}
	if !d.client.IsValid() {
		d.client = r.Remote
	}
	d.clientIP, d.forwarded = d.client.Addr().String(), "for="+strconv.Quote(d.client.String())
	if w, err := identity.WorkloadFromID(r.Peer); err == nil {
		d.peerNS = w.Namespace
	}
	st := p.cfg.State
	if svc, ok := st.Service(r.Authority.Addr()); ok {
		d.svc = svc
	} else if w, ok := st.Workload(r.Authority.Addr()); ok {
		d.wl = w
	}
	d.src, _ = st.Workload(d.client.Addr())
	ids := p.callerIdentities(d)
	if id, revoked := p.refuseRevoked(ids); revoked {
		p.log.Info("tunnel refused: caller identity revoked", "identity", id.String(), "peer", d.peer.String(),
			"src", d.client.String(), "dst", d.authority.String(), "reason", "no workload or waypoint of the mesh carries it any more")
		_ = r.Reject(401, "identity "+id.String()+" is no longer in the mesh")
		return
	}

	// The waypoint terminates the tunnel: it answers 200 at once and reports failures
	// further in, as HTTP statuses (or, for opaque TCP, by closing the stream).
	s, err := r.Accept()
	if err != nil {
		return
	}
	if !p.track(s) {
		s.Close()
		return
	}
	defer p.untrack(s)
	// Revocation cancels ctx as well as closing the stream, so that the requests in flight
	// on it stop waiting for their upstreams.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	untrack, ok := p.rev.Track(closerFunc(func() error { cancel(); return s.Close() }), ids...)
	if !ok {
		return
	}
	defer untrack()
	p.serveStream(ctx, d, s)
}

func (p *Proxy) track(s *hbone.Stream) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.closed {
		return false
	}
	p.conns[s] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(s *hbone.Stream) {
	p.connMu.Lock()
	delete(p.conns, s)
	p.connMu.Unlock()
	p.wg.Done()
}

// Close ends every stream being served and the upstream connections, and waits for the
// handlers to return.
func (p *Proxy) Close() error {
	p.connMu.Lock()
	p.closed = true
	for s := range p.conns {
		s.Close()
	}
	p.connMu.Unlock()
	p.bgCancel()
	p.wg.Wait()
	p.up.close()
	return p.client.Close()
}

// appProtocol is the declared protocol of the destination port, if any.
func (d *downstream) appProtocol() configv1.AppProtocol {
	port := uint32(d.authority.Port())
	if d.svc != nil {
		for _, pt := range d.svc.GetPorts() {
			if pt.GetServicePort() == port {
				return pt.GetAppProtocol()
			}
		}
	}
	if d.wl != nil {
		for _, pl := range d.wl.GetServices() {
			for _, pt := range pl.GetPorts() {
				tp := pt.GetTargetPort()
				if tp == 0 {
					tp = pt.GetServicePort()
				}
				if tp == port {
					return pt.GetAppProtocol()
				}
			}
		}
	}
	return configv1.AppProtocol_TCP
}

// statusText is the body of the answers the waypoint makes itself.
func statusText(code int, reason string) string {
	if reason == "" {
		reason = http.StatusText(code)
	}
	return reason + "\n"
}
