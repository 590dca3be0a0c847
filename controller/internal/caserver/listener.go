package caserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/xdsclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// DefaultGRPCAddr is the controller's gRPC port (config push and CA).
const DefaultGRPCAddr = ":15012"

// ListenerOptions configures the controller's gRPC listener.
type ListenerOptions struct {
	// Addr to listen on; default DefaultGRPCAddr. Ignored when Listener is set.
	Addr string
	// Listener, when set, is served instead of listening on Addr (tests).
	Listener net.Listener
	// CA issues the listener's own certificate, for ControllerID of its trust domain.
	// Required.
	CA *identity.CA
	// Services register themselves on the server, e.g. (*xds.Server).Register and
	// (*Server).Register.
	Services []func(*grpc.Server)
	// Logger; default discards.
	Logger *slog.Logger
	// DrainTimeout bounds the graceful stop when Run's context ends; default 5s.
	DrainTimeout time.Duration
}

// Listener is the controller's gRPC server: TLS 1.3 under the controller's SPIFFE ID, with a
// certificate from the mesh CA that an identity.Manager renews at half-life.
type Listener struct {
	opts ListenerOptions
}

// NewListener validates opts.
func NewListener(opts ListenerOptions) (*Listener, error) {
	if opts.CA == nil {
		return nil, errors.New("grpc listener: no ca")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultGRPCAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	return &Listener{opts: opts}, nil
}

// Run serves until ctx ends, then stops gracefully (forcefully after DrainTimeout) and
// returns nil; an error means the listener could not start or failed.
func (l *Listener) Run(ctx context.Context) error {
	lis := l.opts.Listener
	if lis == nil {
		var err error
		if lis, err = (&net.ListenConfig{}).Listen(ctx, "tcp", l.opts.Addr); err != nil {
			return fmt.Errorf("grpc listener: %w", err)
		}
	}
	id := xdsclient.ControllerID(l.opts.CA.TrustDomain())
	mgr := identity.NewManager(identity.ManagerOptions{Signer: l.opts.CA, Logger: l.opts.Logger})
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(ServerTLS(mgr, id))),
		grpc.MaxRecvMsgSize(xdsclient.MaxMessageSize),
		// A full config is megabytes in one response; the default 64 KiB windows would
		// trickle it through in round trips.
		grpc.InitialWindowSize(4<<20),
		grpc.InitialConnWindowSize(16<<20),
		// Proxies ping idle streams; let them, at a sane rate.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	for _, register := range l.opts.Services {
		register(gs)
	}
	mctx, stopMgr := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = mgr.Run(mctx) })
	defer func() { stopMgr(); wg.Wait() }()

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	l.opts.Logger.Info("grpc listening", "addr", lis.Addr().String(), "identity", id.String())
	select {
	case err := <-served:
		return fmt.Errorf("grpc listener: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(l.opts.DrainTimeout):
		l.opts.Logger.Warn("grpc drain timed out; closing streams", "timeout", l.opts.DrainTimeout)
		gs.Stop()
		<-stopped
	}
	<-served
	return nil
}
