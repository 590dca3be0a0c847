// Package app assembles ztunnel: config from the controller over delta xDS, certificates
// for the node's pods from the controller's CA (or, standalone, config from a local file
// and certificates from a local root), the pods handed over through the node API, the
// periodic check of their capture rules, and the admin, metrics and readiness endpoints.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"ambit.dev/mesh/health"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/state"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"ambit.dev/ztunnel/internal/inpod"
	"ambit.dev/ztunnel/internal/localconfig"
	"ambit.dev/ztunnel/internal/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
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
	return nil
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
var ErrStopNow = errors.New("stop without waiting for a successor")

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
	var (
		synced atomic.Bool
		bundle *x509bundle.Bundle
		signer identity.Signer
		feed   func(context.Context) error // keeps st in step with the config source
		source string                      // for the start line
	)
	if cfg.LocalConfig != "" {
		caDir := cfg.LocalCADir
		if caDir == "" {
			caDir = filepath.Join(cfg.StateDir, "ca")
		}
		ca, err := loadLocalCA(caDir, td, log)
		if err != nil {
			return err
		}
		bundle, signer = ca.Bundle(), ca
		src := &localconfig.Source{Path: cfg.LocalConfig, State: st, Logger: log.With("component", "localconfig")}
		if err := src.Load(); err != nil {
			return err
		}
		synced.Store(true)
		feed, source = src.Run, "local config "+cfg.LocalConfig
	} else {
		var err error
		if bundle, err = identity.LoadBundle(td, cfg.RootCert); err != nil {
			return err
		}
		cc, err := xdsclient.Dial(xdsclient.DialOptions{Address: cfg.Controller, Token: xdsclient.TokenFile(cfg.TokenFile), Bundle: bundle, ServerID: xdsclient.ControllerID(td)})
		if err != nil {
			return err
		}
		defer cc.Close()
		signer = xdsclient.NewCAClient(cc)
		pending := map[string]bool{}
		for _, t := range configv1.TypeURLs {
			pending[t] = true
		}
		client, err := xdsclient.NewClient(cc, xdsclient.Config{
			Node:     xdsclient.NodeInfo{ID: "ztunnel~" + cfg.Node, Node: cfg.Node, Kind: xdsclient.KindZtunnel},
			TypeURLs: configv1.TypeURLs,
			Logger:   log.With("component", "xds"),
			Handler: xdsclient.HandlerFunc(func(typeURL string, upserts map[string]xdsclient.Resource, removals []string) error {
				msgs := make(map[string]proto.Message, len(upserts))
				for k, r := range upserts {
					msgs[k] = r.Message
				}
				if err := st.Apply(typeURL, msgs, removals); err != nil {
					return err
				}
				delete(pending, typeURL)
				if len(pending) == 0 {
					synced.Store(true)
				}
				return nil
			}),
		})
		if err != nil {
			return err
		}
		feed, source = client.Run, "controller "+cfg.Controller
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	certs := identity.NewManager(identity.ManagerOptions{Signer: signer, Logger: log.With("component", "certs")})
	node := &proxy.Node{State: st, Certs: certs.Certificate, Prefetch: certs.Prefetch, Bundle: bundle, TrustDomain: td, Logger: log, Metrics: proxy.NewMetrics(reg)}
	pods := inpod.NewManager(node, st, inpod.Netns{}, cfg.StateDir, log.With("component", "inpod"))

	reconcile := make(chan struct{}, 1)
	st.OnChange(func() {
		select {
		case reconcile <- struct{}{}:
		default:
		}
	})

	// A ztunnel already serving the node API is the predecessor to take over from.
	predecessor := live(cfg.NodeAPI)
	if predecessor {
		log.Info("another ztunnel serves the node API; taking over from it once the config is in", "node_api", cfg.NodeAPI)
	}

	var tookOver atomic.Bool
	ready := func() error {
		if !synced.Load() {
			return errors.New("config not received from the controller yet")
		}
		if predecessor && !tookOver.Load() {
			return errors.New("taking over from the previous ztunnel")
		}
		for _, c := range certs.Identities() {
			if c.State != dump.StateValid && c.State != dump.StateRenewing && c.State != dump.StateRetrying {
				return fmt.Errorf("certificate for %s is %s", c.ID, c.State)
			}
		}
		return nil
	}
	// The HTTP listeners open first, so that an address in use fails the start before
	// anything runs.
	var (
		servers []*http.Server
		lns     []net.Listener
	)
	for _, s := range []struct {
		name, addr string
		h          http.Handler
	}{
		{"admin", cfg.AdminAddr, adminHandler(st, certs, pods)},
		{"metrics", cfg.MetricsAddr, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})},
		{"ready", cfg.ReadyAddr, health.ReadyHandler(ready)},
	} {
		if s.addr == "" {
			continue
		}
		// SO_REUSEPORT: during a hand-over the old and the new ztunnel both listen.
		lc := net.ListenConfig{Control: reusePort}
		ln, err := lc.Listen(ctx, "tcp", s.addr)
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return fmt.Errorf("%s listener: %w", s.name, err)
		}
		lns = append(lns, ln)
		servers = append(servers, &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second})
	}
	// The components run until the shutdown below is complete, not until ctx ends: a
	// ztunnel told to stop keeps serving until a successor takes over.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return certs.Run(gctx) })
	g.Go(func() error { return feed(gctx) })
	for i, srv := range servers {
		g.Go(func() error {
			if err := srv.Serve(lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http %s: %w", lns[i].Addr(), err)
			}
			return nil
		})
	}
	apiSrv := &http.Server{Handler: pods.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveAPI := func() error {
		ln, err := listenUnixReplacing(cfg.NodeAPI)
		if err != nil {
			return fmt.Errorf("node api listener: %w", err)
		}
		g.Go(func() error {
			if err := apiSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("node-api: %w", err)
			}
			return nil
		})
		return nil
	}
	if !predecessor {
		if err := serveAPI(); err != nil {
			for _, srv := range servers {
				srv.Close()
			}
			stopRun()
			_ = g.Wait()
			return err
		}
	}
	g.Go(func() error {
		// Pods are restored once the first config is in, so that they are captured with
		// the right identity rather than left waiting.
		for !synced.Load() {
			select {
			case <-gctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
		if predecessor {
			if err := pods.TakeOver(gctx, cfg.NodeAPI); err != nil {
				log.Warn("take over from the previous ztunnel", "err", err)
			}
			// Only now the node API's path is ours: the CNI and the lab talk to us.
			if err := serveAPI(); err != nil {
				return err
			}
			tookOver.Store(true)
		} else if err := pods.Restore(gctx); err != nil {
			log.Warn("restore pods", "err", err)
		}
		// The periodic check finds rules changed behind ztunnel's back, and pods whose
		// network namespace went without a removal, between config changes.
		var check <-chan time.Time
		if cfg.CaptureCheck >= 0 {
			iv := cfg.CaptureCheck
			if iv == 0 {
				iv = DefaultCaptureCheck
			}
			t := time.NewTicker(iv)
			defer t.Stop()
			check = t.C
		}
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-reconcile:
				pods.Reconcile(gctx)
			case <-check:
				pods.CheckCapture(gctx)
			}
		}
	})
	log.Info("ztunnel started", "node", cfg.Node, "config", source, "node_api", cfg.NodeAPI)

	select {
	case <-ctx.Done():
		grace := cfg.HandoverGrace
		if errors.Is(context.Cause(ctx), ErrStopNow) {
			grace = 0
		}
		log.Info("shutdown requested; serving until a successor takes over", "grace", grace.String())
		t := time.NewTimer(grace)
		select {
		case <-pods.HandedOver():
			log.Info("a successor took over; draining")
		case <-t.C:
			log.Info("no successor took over; draining")
		case <-gctx.Done():
		}
		t.Stop()
	case <-pods.HandedOver():
		log.Info("a successor took over; draining")
	case <-gctx.Done():
	}
	// The successor serves the node's HTTP endpoints from now on.
	for _, srv := range servers {
		_ = srv.Close()
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainPeriod)
	pods.Drain(dctx)
	cancel()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = apiSrv.Shutdown(sctx)
	cancel()
	stopRun()
	err := g.Wait()
	if err == nil && ctx.Err() == nil {
		// Handed over without being told to stop: under Kubernetes, exiting now would
		// restart this container, which would take the pods back. Wait for the signal.
		log.Info("handed over and drained; waiting for the signal to exit")
		<-ctx.Done()
	}
	log.Info("ztunnel stopped")
	return err
}

// live reports whether a process serves the unix socket at path. A socket file left by a
// ztunnel that is gone is removed.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return true
	}
	if fi, serr := os.Lstat(path); serr == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
	return false
}

// listenUnixReplacing listens on a unix socket at path, replacing whatever is there in one
// step (bind beside, then rename over), so a client never finds the path missing. The file
// is never unlinked on close: by then it may be a successor's.
func listenUnixReplacing(path string) (*net.UnixListener, error) {
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

func adminHandler(st *state.State, certs *identity.Manager, pods *inpod.Manager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		d := dump.Ztunnel{Sections: st.Sections(), Certificates: certs.Identities(), Pods: pods.Pods()}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
	})
	// Go's profiles, for the figures in docs/benchmarks.md: the admin listener is loopback
	// only, like Envoy's and ztunnel's admin.
	health.RegisterPprof(mux)
	return mux
}
