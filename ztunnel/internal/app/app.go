// Package app assembles ztunnel: config from the controller over delta xDS, certificates
// for the node's pods from the controller's CA (or, standalone, config from a local file
// and certificates from a local root), the pods handed over through the node API, the
// periodic check of their capture rules, and the admin, metrics and readiness endpoints.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/memreturn"
	"ambit.dev/mesh/pageout"
	"ambit.dev/mesh/proxyhost"
	"ambit.dev/mesh/state"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"ambit.dev/ztunnel/internal/inpod"
	"ambit.dev/ztunnel/internal/localconfig"
	"ambit.dev/ztunnel/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
)

// Config is ztunnel's configuration; cmd/ztunnel fills it from flags.
type Config struct {
	Node        string
	TrustDomain string
	// Controller is the controller's gRPC address; TokenFile holds this node's token and
	// RootCert the mesh root (PEM) that the controller and every peer chain to.
	Controller string
	TokenFile  string
	RootCert   string
	// StateDir keeps the pod records across restarts; NodeAPI is the unix socket of the
	// node API.
	StateDir string
	NodeAPI  string
	// AdminAddr serves /config_dump (keep it on loopback); MetricsAddr /metrics;
	// ReadyAddr /healthz/ready.
	AdminAddr, MetricsAddr, ReadyAddr string
	// DrainPeriod is how long connections may go on after this ztunnel stops accepting
	// (hand-over or shutdown) before they are closed; zero closes them at once.
	DrainPeriod time.Duration
	// HandoverGrace is how long a ztunnel told to stop (SIGTERM) keeps serving while it waits
	// for a successor to take its pods over; then it drains and exits anyway. Zero drains at
	// once.
	HandoverGrace time.Duration
	// LocalConfig, when set, is standalone mode: the mesh comes from this file (package
	// localconfig) instead of the controller, re-read when it changes, and certificates are
	// signed by a local root in LocalCADir (default <StateDir>/ca), created on first start.
	// Controller, TokenFile and RootCert are not used. Standalone ztunnels trust each other
	// only when they share that root, i.e. the directory's two files.
	LocalConfig string
	LocalCADir  string
	// CaptureCheck is how often every captured pod's rules are compared with what ztunnel
	// installed, and repaired; DefaultCaptureCheck when zero, never when negative.
	CaptureCheck time.Duration
	// HBONEIdleTimeout closes a tunnel connection (HTTP/2 or HTTP/3, either direction) that
	// has carried no stream for this long; hbone.DefaultIdleTimeout (5 min) when zero.
	HBONEIdleTimeout time.Duration
	// H3LossThreshold is the share of its packets an HTTP/3 tunnel must lose for it to send
	// its short packets twice (hbone's loss shield); 0 turns the shield off.
	H3LossThreshold float64
	// PageOutAfter, when positive, is how long after start the pages of the binary that
	// only start-up used are given back (package pageout).
	PageOutAfter time.Duration
	Logger       *slog.Logger
}

// Defaults of cmd/ztunnel's --drain-period and --handover-grace. Together with a few seconds
// for the successor's start, they fit in Kubernetes' default termination grace period of 30 s.
const (
	DefaultDrainPeriod   = 5 * time.Second
	DefaultHandoverGrace = 15 * time.Second
)

// DefaultCaptureCheck is how often the capture rules of every pod are checked for changes
// made behind ztunnel's back (cmd/ztunnel's --capture-check-interval).
const DefaultCaptureCheck = 15 * time.Second

func (c Config) validate() error {
	required := []struct{ name, v string }{{"node", c.Node}, {"state-dir", c.StateDir}, {"node-api", c.NodeAPI}}
	if c.LocalConfig == "" {
		required = append(required, []struct{ name, v string }{
			{"controller", c.Controller}, {"token-file", c.TokenFile}, {"root-cert", c.RootCert},
		}...)
	}
	for _, f := range required {
		if f.v == "" {
			return fmt.Errorf("ztunnel config: --%s is required", f.name)
		}
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("ztunnel config: --trust-domain: %w", err)
	}
	if c.DrainPeriod < 0 {
		return fmt.Errorf("ztunnel config: --drain-period must not be negative")
	}
	if c.HandoverGrace < 0 {
		return fmt.Errorf("ztunnel config: --handover-grace must not be negative")
	}
	if c.HBONEIdleTimeout < 0 {
		return fmt.Errorf("ztunnel config: --hbone-idle-timeout must not be negative")
	}
	if !(c.H3LossThreshold >= 0 && c.H3LossThreshold <= 1) { // NaN too
		return fmt.Errorf("ztunnel config: --h3-loss-threshold must be between 0 (off) and 1, got %g", c.H3LossThreshold)
	}
	return nil
}

// h3LossThreshold is the flag's value in hbone's terms, where 0 means the default.
func (c Config) h3LossThreshold() float64 {
	if c.H3LossThreshold == 0 {
		return -1
	}
	return c.H3LossThreshold
}

// loadLocalCA loads the standalone root from dir, or creates it on the first start. Two
// ztunnels starting at once on a shared dir may race to create it: the loser loads the
// winner's root.
func loadLocalCA(dir string, td spiffeid.TrustDomain, log *slog.Logger) (*identity.CA, error) {
	opts := identity.CAOptions{TrustDomain: td, Logger: log.With("component", "local-ca")}
	ca, err := identity.LoadOrCreateCA(dir, opts)
	if err != nil {
		time.Sleep(200 * time.Millisecond)
		if ca, err = identity.LoadOrCreateCA(dir, opts); err != nil {
			return nil, fmt.Errorf("local ca: %w", err)
		}
	}
	return ca, nil
}

// ErrStopNow, as the cause of Run's context ending (context.WithCancelCause), stops ztunnel
// without waiting for a successor: it drains at once. cmd/ztunnel uses it for SIGINT.
var ErrStopNow = inpod.ErrStopNow

// Run runs ztunnel until ctx ends, then shuts down gracefully: it keeps serving until a
// successor takes its pods over (or HandoverGrace passes), then drains for DrainPeriod.
// When another ztunnel already serves the node API, Run takes its pods over once the config
// is in and then takes the node API's socket path; that ztunnel drains and exits.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.NodeAPI), 0o755); err != nil {
		return err
	}
	st := state.New()
	// A config stream that reconnects means the controller's CA is back too: failed
	// renewals retry at once, and one certificate is renewed to pick up a trust bundle or
	// signing CA the controller may have been restarted with (a root rotation). certs is
	// set before the stream runs (src.feed below).
	// The bundle alone is fetched too, for a node without workloads, which has no
	// certificate to renew but verifies the controller against the bundle.
	var certs *identity.Manager
	bundleKick := make(chan struct{}, 1)
	src, err := newConfigSource(cfg, td, st, func() {
		certs.RetryNow()
		certs.Refresh()
		select {
		case bundleKick <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer src.close()

	reg := proxyhost.NewRegistry()
	certs = identity.NewManager(identity.ManagerOptions{Signer: src.signer, Logger: log.With("component", "certs")})
	node := &proxy.Node{State: st, Certs: certs.Certificate, Prefetch: certs.Prefetch, Bundle: src.bundle, TrustDomain: td, Logger: log, Metrics: proxy.NewMetrics(reg),
		HBONE: hbone.ConnConfig{IdleTimeout: cfg.HBONEIdleTimeout, H3LossThreshold: cfg.h3LossThreshold()}}
	pods := inpod.NewManager(node, st, inpod.Netns{}, cfg.StateDir, log.With("component", "inpod"))
	pods.Synced, pods.CaptureCheck = src.sync.Synced, cfg.captureCheck()
	// A ztunnel already serving the node API is the predecessor to take over from.
	handover := inpod.NewHandover(pods, cfg.NodeAPI, log)

	// The listeners open first, so that an address in use fails the start before anything
	// runs. SO_REUSEPORT: during a hand-over the old and the new ztunnel both listen.
	ready := proxyhost.AllReady(src.sync.Ready, handover.Ready, proxyhost.CertsServing(certs.Identities))
	endpoints, err := proxyhost.Endpoints{
		AdminAddr: cfg.AdminAddr, MetricsAddr: cfg.MetricsAddr, ReadyAddr: cfg.ReadyAddr, ReusePort: true,
		Dump: func() any {
			return dump.Ztunnel{Sections: st.Sections(), Certificates: certs.Identities(), Pods: pods.Pods(),
				TunnelFallbacks: node.TunnelFallbacks(), TrustBundle: identity.DumpRoots(src.bundle, td)}
		},
		Metrics: reg,
		Ready:   ready,
	}.Listen(ctx)
	if err != nil {
		return err
	}
	if !handover.Predecessor() {
		if err := handover.Listen(); err != nil {
			endpoints.Close()
			return err
		}
	}
	// The components run until the shutdown below is complete, not until ctx ends: a
	// ztunnel told to stop keeps serving until a successor takes over.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return certs.Run(gctx) })
	if src.ca != nil {
		g.Go(func() error { return src.ca.RunBundleRefresh(gctx, bundleKick, log.With("component", "trust")) })
	}
	g.Go(func() error { return src.feed(gctx) })
	g.Go(func() error { return endpoints.Run(gctx) })
	g.Go(func() error { return handover.Run(gctx) })
	g.Go(func() error { return pods.Run(gctx) })
	g.Go(func() error { pageout.After(gctx, cfg.PageOutAfter, true, log); return nil })
	g.Go(func() error { memreturn.SettleWhenReady(gctx, ready); return nil })
	log.Info("ztunnel started", "node", cfg.Node, "config", src.name, "node_api", cfg.NodeAPI)

	handover.WaitForSuccessor(ctx, gctx, cfg.HandoverGrace)
	// The successor serves the node's HTTP endpoints from now on.
	endpoints.Close()
	handover.Drain(cfg.DrainPeriod)
	stopRun()
	err = g.Wait()
	if err == nil && ctx.Err() == nil {
		// Handed over without being told to stop: under Kubernetes, exiting now would
		// restart this container, which would take the pods back. Wait for the signal.
		log.Info("handed over and drained; waiting for the signal to exit")
		<-ctx.Done()
	}
	log.Info("ztunnel stopped")
	return err
}

// captureCheck is the interval of the pods' capture check; zero: never.
func (c Config) captureCheck() time.Duration {
	switch {
	case c.CaptureCheck < 0:
		return 0
	case c.CaptureCheck == 0:
		return DefaultCaptureCheck
	}
	return c.CaptureCheck
}

// configSource is where the mesh comes from: the controller over xDS, with certificates
// from its CA, or, standalone, a local file and a local root.
type configSource struct {
	bundle x509bundle.Source
	signer identity.Signer
	ca     *xdsclient.CAClient // the controller's CA; nil standalone
	sync   *proxyhost.SyncTracker
	feed   func(context.Context) error // keeps the state in step with the source
	name   string                      // for the start line
	close  func()
}

func newConfigSource(cfg Config, td spiffeid.TrustDomain, st *state.State, onConnect func()) (*configSource, error) {
	log := cfg.Logger
	if cfg.LocalConfig != "" {
		caDir := cfg.LocalCADir
		if caDir == "" {
			caDir = filepath.Join(cfg.StateDir, "ca")
		}
		ca, err := loadLocalCA(caDir, td, log)
		if err != nil {
			return nil, err
		}
		src := &localconfig.Source{Path: cfg.LocalConfig, State: st, Logger: log.With("component", "localconfig")}
		if err := src.Load(); err != nil {
			return nil, err
		}
		sync := proxyhost.NewSyncTracker(nil)
		sync.MarkSynced()
		return &configSource{bundle: ca.Bundle(), signer: ca, sync: sync, feed: src.Run, name: "local config " + cfg.LocalConfig, close: func() {}}, nil
	}
	cc, bundle, err := xdsclient.DialController(td, cfg.RootCert, cfg.Controller, cfg.TokenFile, log)
	if err != nil {
		return nil, err
	}
	sync := proxyhost.NewSyncTracker(configv1.TypeURLs)
	client, err := xdsclient.NewClient(cc, xdsclient.Config{
		// Every pod's proxy serves HTTP/3 on UDP 15008 (inpod.Netns opens the socket): the
		// controller may mark this node's workloads HBONE_H3.
		Node: xdsclient.NodeInfo{ID: "ztunnel~" + cfg.Node, Node: cfg.Node, Kind: xdsclient.KindZtunnel,
			TunnelProtocols: []string{xdsclient.TunnelHBONE, xdsclient.TunnelHBONEH3}},
		TypeURLs:  configv1.TypeURLs,
		Logger:    log.With("component", "xds"),
		Handler:   sync.Handler(st.Apply),
		OnConnect: onConnect,
	})
	if err != nil {
		cc.Close()
		return nil, err
	}
	ca := xdsclient.NewCAClientWithBundle(cc, bundle)
	return &configSource{
		bundle: bundle, signer: ca, ca: ca, sync: sync,
		feed: client.Run, name: "controller " + cfg.Controller, close: func() { cc.Close() },
	}, nil
}
