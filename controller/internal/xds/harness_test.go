package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"ambit.dev/controller/internal/caserver"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeGen is a Generator whose config the test edits; every proxy gets the same config.
type fakeGen struct {
	mu   sync.Mutex
	res  map[string]map[string]Resource
	seen map[string]Proxy // by ID, the proxies For was asked about
}

func newFakeGen() *fakeGen {
	return &fakeGen{res: map[string]map[string]Resource{}, seen: map[string]Proxy{}}
}

func (g *fakeGen) For(p Proxy) map[string]map[string]Resource {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen[p.ID] = p
	return g.res // replaced, never modified in place
}

func (g *fakeGen) edit(f func(res map[string]map[string]Resource)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	next := make(map[string]map[string]Resource, len(g.res))
	for t, m := range g.res {
		next[t] = maps.Clone(m)
	}
	f(next)
	g.res = next
}

func (g *fakeGen) setWorkload(name, version string) {
	g.edit(func(res map[string]map[string]Resource) {
		if res[configv1.WorkloadTypeURL] == nil {
			res[configv1.WorkloadTypeURL] = map[string]Resource{}
		}
		res[configv1.WorkloadTypeURL][name] = Resource{Version: version, Message: &configv1.Workload{Uid: name, Name: name + "@" + version}}
	})
}

func (g *fakeGen) setService(name, version string) {
	g.edit(func(res map[string]map[string]Resource) {
		if res[configv1.ServiceTypeURL] == nil {
			res[configv1.ServiceTypeURL] = map[string]Resource{}
		}
		res[configv1.ServiceTypeURL][name] = Resource{Version: version, Message: &configv1.Service{Hostname: name}}
	})
}

func (g *fakeGen) delete(t, name string) {
	g.edit(func(res map[string]map[string]Resource) { delete(res[t], name) })
}

// applyCall is one Handler.Apply the client made.
type applyCall struct {
	typeURL  string
	upserts  map[string]string // name → version
	removals []string
}

// recorder is the proxy's Handler: it keeps the applied state and reports every call.
type recorder struct {
	calls  chan applyCall
	mu     sync.Mutex
	state  map[string]map[string]string
	reject func(typeURL string, upserts map[string]xdsclient.Resource) error
}

func newRecorder() *recorder {
	return &recorder{calls: make(chan applyCall, 100), state: map[string]map[string]string{}}
}

func (r *recorder) Apply(t string, upserts map[string]xdsclient.Resource, removals []string) error {
	call := applyCall{typeURL: t, upserts: map[string]string{}, removals: removals}
	for n, res := range upserts {
		call.upserts[n] = res.Version
	}
	r.mu.Lock()
	reject := r.reject
	r.mu.Unlock()
	var err error
	if reject != nil {
		err = reject(t, upserts)
	}
	if err == nil {
		r.mu.Lock()
		if r.state[t] == nil {
			r.state[t] = map[string]string{}
		}
		maps.Copy(r.state[t], call.upserts)
		for _, n := range removals {
			delete(r.state[t], n)
		}
		r.mu.Unlock()
	}
	r.calls <- call
	return err
}

func (r *recorder) snapshot() map[string]map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]map[string]string{}
	for t, m := range r.state {
		out[t] = maps.Clone(m)
	}
	return out
}

// next waits for the next Apply call.
func (r *recorder) next(t *testing.T) applyCall {
	t.Helper()
	select {
	case c := <-r.calls:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for Apply")
		return applyCall{}
	}
}

// nextChange is next, skipping empty responses: a stream announces each type that it has
// not sent yet, which carries nothing to apply.
func (r *recorder) nextChange(t *testing.T) applyCall {
	t.Helper()
	for {
		if c := r.next(t); len(c.upserts)+len(c.removals) > 0 {
			return c
		}
	}
}

// noChange asserts that no non-empty Apply call comes within d.
func (r *recorder) noChange(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case c := <-r.calls:
			if len(c.upserts)+len(c.removals) > 0 {
				t.Fatalf("unexpected Apply: %+v", c)
			}
		case <-deadline:
			return
		}
	}
}

// none asserts that no Apply call comes within d.
func (r *recorder) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case c := <-r.calls:
		t.Fatalf("unexpected Apply: %+v", c)
	case <-time.After(d):
	}
}

// env is a controller (xDS server on real TLS gRPC over loopback) and what clients need.
type env struct {
	t      *testing.T
	ca     *identity.CA
	gen    *fakeGen
	tokens string
	addr   string

	srv    *Server
	reg    *prometheus.Registry
	gs     *grpc.Server
	cancel context.CancelFunc
	done   chan struct{}

	connected chan xdsclient.NodeInfo // Options.Connected's calls
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := caserver.EnsureNodeTokens(dir, "node-a", "node-b"); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ca: ca, gen: newFakeGen(), tokens: dir, connected: make(chan xdsclient.NodeInfo, 16)}
	e.start("127.0.0.1:0")
	t.Cleanup(e.stop)
	return e
}

// start runs a fresh controller (new Server, new listener) on addr, as a restart would.
func (e *env) start(addr string) {
	t := e.t
	t.Helper()
	var lis net.Listener
	var err error
	for range 50 { // the old socket of a restart may linger briefly
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	e.reg = prometheus.NewRegistry()
	srv, err := NewServer(Options{
		Generator:     e.gen,
		Authenticator: testAuth{&caserver.TokenDir{Dir: e.tokens}},
		Logger:        testLogger(t),
		Registry:      e.reg,
		Debounce:      time.Millisecond,
		Connected: func(p Proxy, info xdsclient.NodeInfo) {
			if p.Node != info.Node || p.ID != info.ID {
				t.Errorf("Connected(%+v, %+v): proxy and node info disagree", p, info)
			}
			select {
			case e.connected <- info:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := e.controllerCert()
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)))
	srv.Register(gs)
	ctx, cancel := context.WithCancel(context.Background())
	e.srv, e.gs, e.cancel, e.done = srv, gs, cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		var wg sync.WaitGroup
		wg.Go(func() { _ = gs.Serve(lis) })
		wg.Go(func() { _ = srv.Run(ctx) })
		wg.Wait()
	}()
}

// waypointToken is the own ServiceAccount token of the waypoint shop/wp on node-a: it
// authenticates a caller restricted to that waypoint, as caserver.KubeAuthenticator does.
const waypointToken = "token-of-waypoint-shop-wp"

// testAuth is the node tokens of a TokenDir, plus waypointToken.
type testAuth struct{ nodes *caserver.TokenDir }

func (a testAuth) Authenticate(ctx context.Context, token string) (caserver.Caller, error) {
	if token == waypointToken {
		return caserver.Caller{Node: "node-a", Namespace: "shop", ServiceAccount: "wp"}, nil
	}
	return a.nodes.Authenticate(ctx, token)
}

func (e *env) stop() {
	if e.gs == nil {
		return
	}
	e.cancel()
	// Run's return ends the streams, so a graceful stop completes.
	e.gs.GracefulStop()
	<-e.done
	e.gs = nil
}

func (e *env) controllerCert() (tls.Certificate, error) {
	id := xdsclient.ControllerID(e.ca.TrustDomain())
	mgr := identity.NewManager(identity.ManagerOptions{Signer: e.ca})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c, err := mgr.Certificate(ctx, id)
	if err != nil {
		return tls.Certificate{}, err
	}
	return *c, nil
}

func (e *env) token(node string) string {
	b, err := os.ReadFile(e.tokens + "/" + node)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b[:len(b)-1])
}

func (e *env) dial(token string) *grpc.ClientConn {
	e.t.Helper()
	cc, err := xdsclient.Dial(xdsclient.DialOptions{
		Address: e.addr,
		Token:   xdsclient.StaticToken(token),
		Bundle:  e.ca.Bundle(),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cc
}

// proxy is a running proxy-side client.
type proxy struct {
	client *xdsclient.Client
	rec    *recorder
	stop   func()
}

func (e *env) connect(node, id string, rec *recorder) *proxy {
	e.t.Helper()
	return e.connectAs(xdsclient.NodeInfo{ID: id, Node: node, Kind: xdsclient.KindZtunnel}, rec)
}

func (e *env) connectAs(info xdsclient.NodeInfo, rec *recorder) *proxy {
	e.t.Helper()
	cc := e.dial(e.token(info.Node))
	c, err := xdsclient.NewClient(cc, xdsclient.Config{
		Node:       info,
		TypeURLs:   configv1.TypeURLs,
		Handler:    rec,
		Logger:     testLogger(e.t),
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	p := &proxy{client: c, rec: rec}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("client Run: %v", err)
			}
		})
	}
	e.t.Cleanup(p.stop)
	return p
}

func (e *env) proxyStatus(id string) (ProxyStatus, error) {
	for _, p := range e.srv.Proxies() {
		if p.ID == id {
			return p, nil
		}
	}
	return ProxyStatus{}, fmt.Errorf("proxy %s is not connected", id)
}

func (e *env) waitAcked(t *testing.T, id string) {
	t.Helper()
	wait.Until(t, 5*time.Second, "proxy "+id+" acked", func() error {
		p, err := e.proxyStatus(id)
		if err != nil {
			return err
		}
		if !p.Acked {
			return errors.New("not acked")
		}
		return nil
	})
}
