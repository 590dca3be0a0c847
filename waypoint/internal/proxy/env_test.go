package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/proto"
)

// The tests run the waypoint's data path on loopback with real HBONE on both sides: a
// client with its own SVID tunnels to the waypoint's hbone.Server, and every backend pod is
// an hbone.Server (standing in for the pod's ztunnel) that checks the waypoint's identity
// and forwards to a real HTTP server. The mesh state is filled directly, as the controller
// would push it.

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func sa(name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/shop/sa/"+name) }

type env struct {
	t        testing.TB
	ca       *identity.CA
	state    *state.State
	proxy    *Proxy
	reg      *prometheus.Registry
	spans    *tracetest.InMemoryExporter
	wpAddr   netip.AddrPort
	wpID     spiffeid.ID
	mu       sync.Mutex
	hboneFor map[netip.Addr]netip.AddrPort // pod IP → where its fake ztunnel listens
	appFor   map[netip.AddrPort]string     // pod IP:port → real app address
	certs    sync.Map
}

func newEnv(t testing.TB, opts ...func(*Config)) *env {
	t.Helper()
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ca: ca, state: state.New(), reg: prometheus.NewRegistry(), spans: tracetest.NewInMemoryExporter(),
		wpID: sa("waypoint"), hboneFor: map[netip.Addr]netip.AddrPort{}, appFor: map[netip.AddrPort]string{}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(e.spans))
	cfg := Config{
		State: e.state, Namespace: "shop", Name: "waypoint", TrustDomain: td,
		Certificate: e.cert, Bundle: ca.Bundle(), Metrics: NewMetrics(e.reg), Tracer: tp,
		Logger: slog.New(slog.DiscardHandler),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap := netip.MustParseAddrPort(addr)
			e.mu.Lock()
			real, ok := e.hboneFor[ap.Addr()]
			e.mu.Unlock()
			if !ok {
				real = ap
			}
			var d net.Dialer
			return d.DialContext(ctx, network, real.String())
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	srv, err := hbone.NewServer(hbone.ServerConfig{
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return e.cert(h.Context(), p.Identity()) },
		Bundle:         ca.Bundle(), CheckAuthority: p.CheckAuthority, Handler: p,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	e.wpAddr = netip.MustParseAddrPort(ln.Addr().String())
	t.Cleanup(func() { srv.Close(); p.Close() })
	e.apply(configv1.WaypointTypeURL, map[string]proto.Message{"shop/waypoint": &configv1.Waypoint{
		Name: "waypoint", Namespace: "shop", Identity: e.wpID.String(),
		Address: &configv1.NetworkAddress{Address: e.wpAddr.Addr().AsSlice()},
	}})
	return e
}

func (e *env) cert(_ context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	if c, ok := e.certs.Load(id); ok {
		return c.(*tls.Certificate), nil
	}
	c := identitytest.Issue(e.t, e.ca, id, 0)
	e.certs.Store(id, c)
	return c, nil
}

func (e *env) apply(typeURL string, res map[string]proto.Message) {
	e.t.Helper()
	if err := e.proxy.Apply(typeURL, res, nil); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) gateway() *configv1.GatewayAddress {
	return &configv1.GatewayAddress{Address: &configv1.NetworkAddress{Address: e.wpAddr.Addr().AsSlice()}, Identity: e.wpID.String()}
}

// service adds a Service host.shop.svc.cluster.local with VIP vip:80 → target 8080,
// bound to the waypoint.
func (e *env) service(name, vip string) string {
	host := name + ".shop.svc.cluster.local"
	e.apply(configv1.ServiceTypeURL, map[string]proto.Message{"shop/" + host: &configv1.Service{
		Name: name, Namespace: "shop", Hostname: host,
		Addresses: []*configv1.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
		Ports:     []*configv1.Port{{ServicePort: 80, TargetPort: 8080}},
		Waypoint:  e.gateway(),
	}})
	return "shop/" + host
}

// pod runs h as pod name at ip (port 8080) behind a fake ztunnel, selected by service.
// It returns the number of requests the app served.
func (e *env) pod(name, ip, service string, h http.Handler) *atomic.Int64 {
	e.t.Helper()
	var n atomic.Int64
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("X-Pod", name)
		h.ServeHTTP(w, r)
	}), Protocols: new(http.Protocols)}
	app.Protocols.SetHTTP1(true)
	app.Protocols.SetUnencryptedHTTP2(true)
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = app.Serve(aln) }()
	e.t.Cleanup(func() { app.Close() })
	e.podListener(name, ip, service, aln.Addr().String())
	return &n
}

// podListener puts a fake ztunnel for pod name at ip in front of the app at appAddr.
func (e *env) podListener(name, ip, service, appAddr string) {
	e.t.Helper()
	podID := sa(name)
	srv, err := hbone.NewServer(hbone.ServerConfig{
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return e.cert(h.Context(), podID) },
		Bundle:         e.ca.Bundle(),
		CheckAuthority: func(context.Context, *hbone.Request) error { return nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) {
			if r.Peer != e.wpID {
				_ = r.Reject(401, "only the waypoint")
				return
			}
			_ = hbone.Forward(ctx, r, func(ctx context.Context, _ netip.AddrPort) (hbone.HalfCloser, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", appAddr)
				if err != nil {
					return nil, err
				}
				return c.(*net.TCPConn), nil
			})
		}),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	e.t.Cleanup(func() { srv.Close() })
	e.mu.Lock()
	e.hboneFor[netip.MustParseAddr(ip)] = netip.MustParseAddrPort(ln.Addr().String())
	e.mu.Unlock()
	w := &configv1.Workload{
		Uid: "c//Pod/shop/" + name, Name: name, Namespace: "shop", ServiceAccount: name, WorkloadName: name,
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: configv1.TunnelProtocol_HBONE,
		Services: map[string]*configv1.PortList{service: {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}}},
	}
	e.apply(configv1.WorkloadTypeURL, map[string]proto.Message{w.Uid: w})
}

// clientAddr is the original client's address the tunnels carry unless a test says.
const clientAddr = "10.1.0.5:40000"

// dial opens a tunnel to the waypoint as client id, for authority.
func (e *env) dial(ctx context.Context, id spiffeid.ID, authority string) (net.Conn, error) {
	return e.dialFrom(ctx, id, clientAddr, authority)
}

// mustDial dials authority through the waypoint as "client", within 5 s, and fails t if it
// cannot; the connection closes when t ends.
func (e *env) mustDial(t testing.TB, authority string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.dial(ctx, sa("client"), authority)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialFrom is dial with the original client's address forwarded.
func (e *env) dialFrom(ctx context.Context, id spiffeid.ID, forwarded, authority string) (net.Conn, error) {
	c, err := e.client(id)
	if err != nil {
		return nil, err
	}
	return c.Dial(ctx, hbone.Target{
		Source: id, Address: e.wpAddr, Identities: []spiffeid.ID{e.wpID},
		Authority: netip.MustParseAddrPort(authority), Forwarded: netip.MustParseAddrPort(forwarded),
	})
}

var clients sync.Map

func (e *env) client(id spiffeid.ID) (*hbone.Client, error) {
	key := e.t.Name() + id.String()
	if c, ok := clients.Load(key); ok {
		return c.(*hbone.Client), nil
	}
	c, err := hbone.NewClient(hbone.ClientConfig{Certificate: e.cert, Bundle: e.ca.Bundle()})
	if err != nil {
		return nil, err
	}
	clients.Store(key, c)
	e.t.Cleanup(func() { c.Close(); clients.Delete(key) })
	return c, nil
}

// httpClient speaks HTTP/1.1 (or h2c) through the waypoint as id, to authority.
func (e *env) httpClient(id spiffeid.ID, authority string, h2 bool) *http.Client {
	return e.httpClientFrom(id, clientAddr, authority, h2)
}

// httpClientFrom is httpClient with the original client's address forwarded.
func (e *env) httpClientFrom(id spiffeid.ID, forwarded, authority string, h2 bool) *http.Client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return e.dialFrom(ctx, id, forwarded, authority)
	}
	if h2 {
		tr := &http.Transport{DialContext: dial, Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		e.t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Timeout: 10 * time.Second, Transport: tr}
	}
	tr := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

func get(t *testing.T, c *http.Client, method, url string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func ok(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }
