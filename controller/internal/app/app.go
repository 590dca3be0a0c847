package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"ambit.dev/mesh/identity"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"ambit.dev/controller/internal/caserver"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/routestatus"
	"ambit.dev/controller/internal/source"
	"ambit.dev/controller/internal/waypointdeploy"
	"ambit.dev/controller/internal/waypointexec"
)

// PushServer is the xDS push server (controller/internal/xds). Push is called after every
// commit that changed some resource; it must not block.
type PushServer interface {
	Run(ctx context.Context) error
	Push()
}

// CAService is the certificate service (controller/internal/caserver).
type CAService interface {
	Run(ctx context.Context) error
}

// Deps is what the push server and CA service are built from.
type Deps struct {
	Log      *slog.Logger
	Index    *model.Index
	Store    *source.Store
	CA       *identity.CA
	Registry *prometheus.Registry
	// GRPCAddr is where the gRPC server (config push and CA, TLS) listens.
	GRPCAddr string
	// Kube is set in Kubernetes mode (TokenReview, Secrets); nil in folder mode.
	Kube kubernetes.Interface
}

// Config is the controller's configuration; main fills it from flags.
type Config struct {
	// ConfigDir, when set, selects folder mode: objects come from YAML files there.
	ConfigDir string
	// Kubeconfig is the kubeconfig file for Kubernetes mode; empty means in-cluster.
	Kubeconfig string
	// TrustDomain of workload identities; default cluster.local.
	TrustDomain string
	// CADir holds the CA root (root-cert.pem, root-key.pem), created on first start: the
	// folder mode's store. Empty in folder mode keeps the root in memory only, which is for
	// tests: proxies' certificates then stop verifying after a restart.
	CADir string
	// CASecret ("NAMESPACE/NAME" or "NAME" in the controller's namespace) is the Secret that
	// holds the CA root in Kubernetes mode, created on first start by whichever replica gets
	// there first. Default ambit-ca in the controller's namespace unless CADir is set; it
	// cannot be combined with CADir, nor used in folder mode.
	CASecret string
	// CertTTL is the lifetime of the workload certificates the CA signs for proxies that ask
	// for none (ambit's own proxies never ask); default identity.DefaultCertTTL (24 h). Proxies
	// renew at half-life, so a controller outage shorter than half of it goes unnoticed and
	// one shorter than all of it keeps the mesh running on the certificates it holds. At
	// least MinCertTTL, at most identity.DefaultMaxCertTTL.
	CertTTL time.Duration
	// GRPCAddr is the config push and CA address; default :15012.
	GRPCAddr string
	// MetricsAddr serves /metrics, /healthz and /readyz; default :15014. "-" disables it.
	MetricsAddr string
	// LeaderElect runs leader election on a Lease (Kubernetes mode only).
	LeaderElect bool
	// LeaseNamespace and LeaseName name the Lease; defaults: $POD_NAMESPACE or ambit-system,
	// and ambit-controller.
	LeaseNamespace, LeaseName string
	// Identity of this replica in the Lease; default the hostname.
	Identity string
	// Debounce between an object change and the model commit; default 20ms.
	Debounce time.Duration
	// TunnelProtocol is the mesh-wide default of the ambit.dev/tunnel-protocol label:
	// "hbone" (also "") or "hbone-h3" (HBONE over HTTP/3 to the workloads whose node's
	// ztunnel serves it; see model.LabelTunnelProtocol).
	TunnelProtocol string

	// WaypointTemplate is the file of the template the waypoints' objects are rendered from
	// (Kubernetes mode); empty uses the built-in copy of deploy/waypoint/waypoint.yaml.
	WaypointTemplate string
	// WaypointImage is the waypoints' image; default DefaultWaypointImage.
	WaypointImage string
	// WaypointController is the controller's gRPC address the waypoints dial; default
	// ambit-controller.<LeaseNamespace>.svc:15012, the Service in deploy/controller.
	WaypointController string

	// WaypointExec, folder mode only, runs the waypoints of the ambit-waypoint Gateways with
	// this command and its arguments (internal/waypointexec; the lab's pods).
	WaypointExec []string

	// NewPushServer and NewCAService build the gRPC services; nil leaves them out.
	NewPushServer func(Deps) (PushServer, error)
	NewCAService  func(Deps) (CAService, error)
	// LeaderTasks run only while this replica leads (always, without leader election).
	LeaderTasks []func(ctx context.Context) error

	metricsLn net.Listener // tests: serve metrics here instead of MetricsAddr
}

// MinCertTTL is the shortest workload certificate lifetime Config.CertTTL accepts: enough for
// a renewal at half-life and its retries, short enough to try an outage in a test.
const MinCertTTL = 10 * time.Second

// withDefaults validates c and returns a copy with defaults filled in.
func (c Config) withDefaults() (Config, error) {
	if c.TrustDomain == "" {
		c.TrustDomain = model.DefaultTrustDomain
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return c, fmt.Errorf("trust domain %q: %w", c.TrustDomain, err)
	}
	if err := model.ValidTunnelMode(c.TunnelProtocol); err != nil {
		return c, err
	}
	if c.ConfigDir != "" && c.Kubeconfig != "" {
		return c, errors.New("config dir and kubeconfig are mutually exclusive")
	}
	if c.ConfigDir != "" && c.LeaderElect {
		return c, errors.New("leader election needs Kubernetes mode, not a config dir")
	}
	if c.ConfigDir == "" && len(c.WaypointExec) > 0 {
		return c, errors.New("a waypoint exec command needs folder mode; in Kubernetes waypoints are Deployments")
	}
	if c.ConfigDir != "" && c.WaypointTemplate != "" {
		return c, errors.New("a waypoint template needs Kubernetes mode; in folder mode the lab runs the waypoints")
	}
	if c.ConfigDir != "" && c.CASecret != "" {
		return c, errors.New("a ca secret needs Kubernetes mode; in folder mode the root lives in the ca dir")
	}
	if c.CADir != "" && c.CASecret != "" {
		return c, errors.New("ca dir and ca secret are mutually exclusive")
	}
	switch {
	case c.CertTTL == 0:
		c.CertTTL = identity.DefaultCertTTL
	case c.CertTTL < MinCertTTL || c.CertTTL > identity.DefaultMaxCertTTL:
		return c, fmt.Errorf("certificate ttl %s: want between %s and %s", c.CertTTL, MinCertTTL, identity.DefaultMaxCertTTL)
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = ":15012"
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = ":15014"
	}
	if c.LeaseNamespace == "" {
		c.LeaseNamespace = os.Getenv("POD_NAMESPACE")
	}
	if c.LeaseNamespace == "" {
		c.LeaseNamespace = model.DefaultRootNS
	}
	if c.ConfigDir == "" && c.CADir == "" && c.CASecret == "" {
		c.CASecret = c.LeaseNamespace + "/" + caserver.DefaultCASecretName
	}
	if c.CASecret != "" {
		if _, _, err := caserver.ParseSecretRef(c.CASecret, c.LeaseNamespace); err != nil {
			return c, fmt.Errorf("ca secret: %w", err)
		}
	}
	if c.LeaseName == "" {
		c.LeaseName = "ambit-controller"
	}
	if c.WaypointImage == "" {
		c.WaypointImage = DefaultWaypointImage
	}
	if c.WaypointController == "" {
		c.WaypointController = "ambit-controller." + c.LeaseNamespace + ".svc:15012"
	}
	if _, _, err := net.SplitHostPort(c.WaypointController); err != nil {
		return c, fmt.Errorf("waypoint controller address %q: %w", c.WaypointController, err)
	}
	if c.Identity == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("hostname for leader identity: %w", err)
		}
		c.Identity = h
	}
	return c, nil
}

// Run runs the controller until ctx ends. It fails at once on bad configuration, an
// unreadable config dir or CA root, or a port in use.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return fmt.Errorf("controller config: %w", err)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	caOpts := identity.CAOptions{TrustDomain: td, DefaultTTL: cfg.CertTTL, Logger: log.With("component", "ca")}

	var clients source.KubeClients
	var wpTemplate *waypointdeploy.Template
	if cfg.ConfigDir == "" {
		if wpTemplate, err = loadWaypointTemplate(cfg.WaypointTemplate); err != nil {
			return err
		}
		rc, err := restConfig(cfg.Kubeconfig)
		if err != nil {
			return err
		}
		if clients, err = newClients(rc); err != nil {
			return err
		}
	}
	ca, err := loadCA(ctx, cfg, caOpts, clients.Kube, log)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if cfg.CADir != "" {
		if err := writeTrustBundle(cfg.CADir, ca.RootPEM()); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := newMetrics(reg)

	idx := model.NewIndex(model.Options{TrustDomain: cfg.TrustDomain, TunnelProtocol: cfg.TunnelProtocol})
	store := source.NewStore(idx, log.With("component", "store"), source.StoreOptions{Debounce: cfg.Debounce})
	deps := Deps{Log: log, Index: idx, Store: store, CA: ca, Registry: reg, GRPCAddr: cfg.GRPCAddr}

	var g group
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	src, err := startSource(ctx, cancel, &g, cfg, clients, wpTemplate, ca, &deps, m)
	if err != nil {
		return err
	}
	push, err := startServices(ctx, cancel, &g, cfg, deps, handlerDeps{reg: reg, store: store})
	if err != nil {
		return err
	}
	updates := store.Subscribe()
	if len(cfg.WaypointExec) > 0 {
		r := &waypointexec.Runner{Command: cfg.WaypointExec, Waypoints: idx.Waypoints, Synced: store.Synced,
			Updates: store.Subscribe(), Log: log.With("component", "waypointexec")}
		g.Go(ctx, cancel, "waypoint exec", r.Run)
	}
	g.Go(ctx, cancel, "store", store.Run)
	g.Go(ctx, cancel, "source", src.Run)
	g.Go(ctx, cancel, "push trigger", func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-updates:
				m.observe(idx)
				if push != nil {
					push.Push()
				}
			}
		}
	})
	log.Info("controller started", "trust_domain", cfg.TrustDomain, "grpc_addr", cfg.GRPCAddr)
	err = g.Wait()
	log.Info("controller stopped")
	return err
}

// startSource returns the configuration source (the folder, or Kubernetes with the
// waypoint deployer) and starts the tasks that run only on the leader, under leader election
// when it is on.
func startSource(ctx context.Context, cancel context.CancelFunc, g *group, cfg Config, clients source.KubeClients,
	wpTemplate *waypointdeploy.Template, ca *identity.CA, deps *Deps, m *metrics) (interface{ Run(context.Context) error }, error) {
	log := deps.Log
	var src interface{ Run(context.Context) error }
	if cfg.ConfigDir != "" {
		log.Info("folder mode", "dir", cfg.ConfigDir)
		f, err := source.NewFolder(cfg.ConfigDir, deps.Store, log.With("component", "folder"), 0)
		if err != nil {
			return nil, err
		}
		src = f
	} else {
		deps.Kube = clients.Kube
		src = source.NewKube(clients, deps.Store, log.With("component", "kube"), 0)
		wr, err := waypointdeploy.New(waypointdeploy.Options{
			Settings: waypointdeploy.Settings{Template: wpTemplate, Image: cfg.WaypointImage, Controller: cfg.WaypointController,
				TrustDomain: cfg.TrustDomain, RootCert: ca.RootPEM()},
			Dynamic: clients.Dynamic, Gateway: clients.Gateway, Logger: log.With("component", "waypoints"),
		})
		if err != nil {
			return nil, err
		}
		// The leader is the one writer of the waypoints' objects, the Gateways' status and
		// the status of the routes, Istio's kinds and ambit's policies.
		rs := &routestatus.Writer{Kube: clients.Kube, Gateway: clients.Gateway, Dynamic: clients.Dynamic, Verdicts: deps.Store,
			Domain: deps.Index.Options().Domain,
			Log:    log.With("component", "route-status")}
		cfg.LeaderTasks = append(slices.Clip(cfg.LeaderTasks), wr.Run, rs.Run)
		if cfg.LeaderElect {
			le, err := newElector(cfg, clients.Kube, log.With("component", "leader"), m, cfg.LeaderTasks)
			if err != nil {
				return nil, err
			}
			g.Go(ctx, cancel, "leader election", le.Run)
			cfg.LeaderTasks = nil
		}
	}
	if !cfg.LeaderElect || cfg.ConfigDir != "" {
		m.leader.Set(1)
	}
	for _, t := range cfg.LeaderTasks {
		g.Go(ctx, cancel, "leader task", t)
	}
	return src, nil
}

// handlerDeps is what the metrics and health endpoints read.
type handlerDeps struct {
	reg   *prometheus.Registry
	store *source.Store
}

// startServices starts the push server and the CA service the config names, and the
// metrics and health endpoints; it returns the push server, nil when there is none.
func startServices(ctx context.Context, cancel context.CancelFunc, g *group, cfg Config, deps Deps, h handlerDeps) (PushServer, error) {
	var push PushServer
	var err error
	if cfg.NewPushServer != nil {
		if push, err = cfg.NewPushServer(deps); err != nil {
			return nil, fmt.Errorf("push server: %w", err)
		}
		g.Go(ctx, cancel, "push server", push.Run)
	}
	if cfg.NewCAService != nil {
		cs, err := cfg.NewCAService(deps)
		if err != nil {
			return nil, fmt.Errorf("ca service: %w", err)
		}
		g.Go(ctx, cancel, "ca service", cs.Run)
	}
	if cfg.MetricsAddr != "-" {
		ln := cfg.metricsLn
		if ln == nil {
			if ln, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
				return nil, fmt.Errorf("metrics listener: %w", err)
			}
		}
		deps.Log.Info("serving metrics and health", "addr", ln.Addr().String())
		g.Go(ctx, cancel, "metrics", func(ctx context.Context) error { return serveHTTP(ctx, ln, handler(h.reg, h.store, push)) })
	}
	return push, nil
}

// DefaultWaypointImage is the image the waypoints run unless --waypoint-image says
// otherwise: like the controller's in deploy/controller, a name without a registry.
const DefaultWaypointImage = "ambit/waypoint:dev"

// loadWaypointTemplate parses the template file, or the built-in one when file is empty.
func loadWaypointTemplate(file string) (*waypointdeploy.Template, error) {
	if file == "" {
		return waypointdeploy.Parse(waypointdeploy.DefaultTemplateName, waypointdeploy.DefaultTemplate)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("waypoint template: %w", err)
	}
	return waypointdeploy.Parse(file, data)
}

// loadCA returns the CA: its root from the Secret (Kubernetes mode), from the CA dir, or a
// fresh one in memory.
func loadCA(ctx context.Context, cfg Config, opts identity.CAOptions, kube kubernetes.Interface, log *slog.Logger) (*identity.CA, error) {
	switch {
	case cfg.CASecret != "":
		ns, name, err := caserver.ParseSecretRef(cfg.CASecret, cfg.LeaseNamespace)
		if err != nil {
			return nil, err
		}
		s := &caserver.SecretCA{Client: kube, Namespace: ns, Name: name, CA: opts, Logger: log.With("component", "ca")}
		return s.Load(ctx)
	case cfg.CADir != "":
		return identity.LoadOrCreateCA(cfg.CADir, opts)
	default:
		log.Warn("no CA dir: the CA root lives in memory and changes at every restart")
		return identity.NewCA(opts)
	}
}

// TrustBundleFile is the file of the CA dir where the controller writes, at every start, the
// roots it sends proxies: what their --root-cert should name, so that a proxy started during
// or after a root rotation trusts the controller's certificate.
const TrustBundleFile = "trust-bundle.pem"

// writeTrustBundle replaces dir's trust-bundle.pem with bundle, atomically: a proxy starting
// meanwhile reads the old bundle or the new one, never half of one.
func writeTrustBundle(dir string, bundle []byte) error {
	path := filepath.Join(dir, TrustBundleFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, bundle) {
		return nil
	}
	f, err := os.CreateTemp(dir, "."+TrustBundleFile+".tmp*")
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(bundle)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	return nil
}

// group runs functions until ctx ends; the first error cancels the rest.
type group struct {
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

func (g *group) Go(ctx context.Context, cancel context.CancelFunc, name string, f func(context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(ctx); err != nil {
			g.once.Do(func() { g.err = fmt.Errorf("%s: %w", name, err) })
			cancel()
		}
	}()
}

func (g *group) Wait() error { g.wg.Wait(); return g.err }

func restConfig(kubeconfig string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "ambit-controller"
	rc.QPS, rc.Burst = 50, 100
	return rc, nil
}

func newClients(rc *rest.Config) (source.KubeClients, error) {
	k, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return source.KubeClients{}, fmt.Errorf("kubernetes client: %w", err)
	}
	gw, err := gatewayclient.NewForConfig(rc)
	if err != nil {
		return source.KubeClients{}, fmt.Errorf("gateway api client: %w", err)
	}
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		return source.KubeClients{}, fmt.Errorf("dynamic client: %w", err)
	}
	return source.KubeClients{Kube: k, Gateway: gw, Dynamic: d}, nil
}

func handler(reg *prometheus.Registry, store *source.Store, push PushServer) http.Handler {
	mux := http.NewServeMux()
	// The push server's view of connected proxies, read by ambitctl proxy-status.
	if d, ok := push.(interface{ DebugHandler() http.Handler }); ok {
		mux.Handle("GET /debug/proxies", d.DebugHandler())
	}
	// What the controller refuses now (invalid objects and files), read by ambitctl analyze.
	mux.HandleFunc("GET "+source.AnalysisPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(store.Problems())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !store.Synced() {
			http.Error(w, "config not loaded yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// serveHTTP serves until ctx ends, then drains for up to 5 s.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown %s: %w", ln.Addr(), err)
	}
	<-errc
	return nil
}
