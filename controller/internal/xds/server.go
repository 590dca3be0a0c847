package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"ambit.dev/controller/internal/caserver"
	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/xdsclient"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Proxy is a connected proxy as the Generator sees it: ID (Node.id), the authenticated Node
// name, Kind ("ztunnel" or "waypoint") and, for a waypoint, the Namespace and Name of its
// Gateway. It is the model's type, so the model's Index needs no conversion.
type Proxy = model.Proxy

// Resource is one resource of a proxy's desired config: a Version that changes whenever the
// Message does (equal versions mean equal content) and the Message. It is the model's type:
// the maps the model's Index returns are handed through as they are, which is what lets the
// server share work between proxies (see Generator).
type Resource = model.Resource

// Generator computes a proxy's complete desired config: type URL → resource name → resource.
// It is called concurrently from every stream's goroutine and must not modify what it has
// returned before (the server keeps no copy).
//
// Pushes are cheapest when the Generator returns the same map (by identity) for a type whose
// content did not change, and the same map to proxies that see the same resources: the
// server then skips the type, or computes the difference once and shares it between proxies.
// A Generator that builds fresh maps on every call is correct, only slower (every proxy is
// compared in full).
type Generator interface {
	For(p Proxy) map[string]map[string]Resource
}

// GeneratorFunc adapts a function to Generator; for the model's Index:
//
//	xds.GeneratorFunc(func(p xds.Proxy) map[string]map[string]xds.Resource { return idx.For(p) })
type GeneratorFunc func(p Proxy) map[string]map[string]Resource

// For calls f.
func (f GeneratorFunc) For(p Proxy) map[string]map[string]Resource { return f(p) }

// Authenticator maps a bearer token to a caller; see caserver.Authenticator.
type Authenticator = caserver.Authenticator

// Options configures a Server.
type Options struct {
	// Generator computes each proxy's config. Required.
	Generator Generator
	// Authenticator checks the proxies' tokens. Required.
	Authenticator Authenticator
	// Logger; default discards.
	Logger *slog.Logger
	// Registry receives the server's metrics; nil registers nothing.
	Registry prometheus.Registerer
	// Debounce is how long Run waits after a Push for more pushes to coalesce with it.
	// Default 10ms; negative means none.
	Debounce time.Duration
	// Connected, if set, is called with each proxy that opens a stream, authenticated, and
	// what it reported about itself (the tunnel protocols it serves), before its first
	// config is computed. It must not block.
	Connected func(p Proxy, info xdsclient.NodeInfo)
}

// DefaultDebounce is the default Options.Debounce.
const DefaultDebounce = 10 * time.Millisecond

// Server is the delta xDS server. Register it on a grpc.Server and run Run.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	gen      Generator
	auth     Authenticator
	log      *slog.Logger
	debounce time.Duration
	metrics  *metrics
	cache    anyCache
	deltas   deltaCache
	onConn   func(Proxy, xdsclient.NodeInfo)

	pushCh    chan struct{}
	stopped   chan struct{} // closed when Run returns: streams end so GracefulStop can finish
	pushSince atomic.Int64  // unix nanos of the first Push not yet published, 0 if none
	version   atomic.Pointer[generation]
	running   atomic.Bool

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// generation is one published push.
type generation struct {
	n     uint64
	start time.Time // when the first Push of it was called
}

// NewServer validates opts and returns a Server.
func NewServer(opts Options) (*Server, error) {
	switch {
	case opts.Generator == nil:
		return nil, errors.New("xds server: no generator")
	case opts.Authenticator == nil:
		return nil, errors.New("xds server: no authenticator")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	m, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, fmt.Errorf("xds server: %w", err)
	}
	s := &Server{
		gen:      opts.Generator,
		auth:     opts.Authenticator,
		log:      opts.Logger,
		debounce: max(opts.Debounce, 0),
		metrics:  m,
		pushCh:   make(chan struct{}, 1),
		stopped:  make(chan struct{}),
		conns:    make(map[*conn]struct{}),
		onConn:   opts.Connected,
	}
	s.version.Store(&generation{start: time.Now()})
	return s, nil
}

// Register adds the aggregated discovery service to gs.
func (s *Server) Register(gs *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, s)
}

// Push tells the server that the Generator's output may have changed. It never blocks;
// pushes are coalesced by Run.
func (s *Server) Push() {
	s.pushSince.CompareAndSwap(0, time.Now().UnixNano())
	select {
	case s.pushCh <- struct{}{}:
	default:
	}
}

// Run publishes pushes to the connected streams until ctx ends, then ends every stream
// (UNAVAILABLE, so proxies reconnect to another replica or after a restart, keeping their
// config meanwhile) and returns nil; grpc.Server.GracefulStop can then finish. Streams are
// served (and get their initial config) whether Run runs or not; without Run they just never
// see a Push.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("xds server: Run called twice")
	}
	defer close(s.stopped)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.pushCh:
		}
		if s.debounce > 0 {
			t := time.NewTimer(s.debounce)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		select {
		case <-s.pushCh:
		default:
		}
		start := time.Unix(0, s.pushSince.Swap(0))
		g := &generation{n: s.version.Load().n + 1, start: start}
		s.version.Store(g)
		s.mu.Lock()
		for c := range s.conns {
			c.notify()
		}
		s.mu.Unlock()
	}
}

// DeltaAggregatedResources serves one proxy's stream.
func (s *Server) DeltaAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	ctx := st.Context()
	caller, err := caserver.Authenticate(ctx, s.auth)
	if err != nil {
		s.log.Warn("xds stream refused", "reason", "authentication", "peer", peerAddr(ctx), "error", err)
		return toStatus(err)
	}
	first, err := st.Recv()
	if err != nil {
		return err
	}
	info, err := xdsclient.ParseNode(first.GetNode())
	if err != nil {
		s.log.Warn("xds stream refused", "reason", "bad node", "caller", caller.String(), "error", err)
		return status.Errorf(codes.InvalidArgument, "xds: %v", err)
	}
	if info.Node != caller.Node {
		s.log.Warn("xds stream refused", "reason", "node mismatch", "caller", caller.String(), "claimed", info.Node, "id", info.ID)
		return status.Errorf(codes.PermissionDenied, "xds: token is for node %q, not %q", caller.Node, info.Node)
	}
	// A waypoint's own token is good for its own config only.
	if caller.Restricted() && (info.Kind != xdsclient.KindWaypoint || info.WaypointNamespace != caller.Namespace || info.WaypointName != caller.ServiceAccount) {
		s.log.Warn("xds stream refused", "reason", "not the caller's waypoint", "caller", caller.String(), "kind", info.Kind,
			"waypoint", info.WaypointNamespace+"/"+info.WaypointName, "id", info.ID)
		return status.Errorf(codes.PermissionDenied, "xds: token of %s/%s is good for waypoint %s/%s only, not %s %s/%s",
			caller.Namespace, caller.ServiceAccount, caller.Namespace, caller.ServiceAccount, info.Kind, info.WaypointNamespace, info.WaypointName)
	}
	c := newConn(s, st, Proxy{ID: info.ID, Node: info.Node, Kind: info.Kind, Namespace: info.WaypointNamespace, Name: info.WaypointName})
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.metrics.connected.Inc()
	s.log.Info("proxy connected", "id", c.proxy.ID, "node", c.proxy.Node, "kind", c.proxy.Kind, "tunnel_protocols", info.TunnelProtocols)
	if s.onConn != nil {
		s.onConn(c.proxy, info)
	}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.metrics.connected.Dec()
		s.log.Info("proxy disconnected", "id", c.proxy.ID, "node", c.proxy.Node)
	}()
	return c.serve(ctx, first)
}

func toStatus(err error) error {
	switch {
	case errors.Is(err, caserver.ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}
