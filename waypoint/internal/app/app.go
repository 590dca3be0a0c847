// Package app assembles the waypoint: config from the controller over delta xDS, its
// certificate from the controller's CA, the HBONE listener serving the proxy, and the
// admin (/config_dump), metrics and readiness endpoints.
package app

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/health"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/state"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"ambit.dev/waypoint/internal/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// Config is the waypoint's configuration; cmd/waypoint fills it from flags.
type Config struct {
	// Name and Namespace are the Gateway this waypoint serves.
	Name, Namespace string
	TrustDomain     string
	// Node is the node the waypoint runs on, which its token names.
	Node string
	// Controller is the controller's gRPC address; TokenFile holds the node's token and
	// RootCert the mesh root (PEM).
	Controller, TokenFile, RootCert string
	// HBONEAddr is where tunnels arrive; AdminAddr serves /config_dump (keep it on
	// loopback); MetricsAddr /metrics; ReadyAddr /healthz/ready.
	HBONEAddr, AdminAddr, MetricsAddr, ReadyAddr string
	// OTLPEndpoint, when set, receives the request spans over OTLP/gRPC (host:port).
	OTLPEndpoint string
	// SpanExporter, when set, receives the spans instead (tests).
	SpanExporter sdktrace.SpanExporter
	DrainPeriod  time.Duration
	Logger       *slog.Logger
}

func (c Config) validate() error {
	for _, f := range []struct{ name, v string }{
		{"name", c.Name}, {"namespace", c.Namespace}, {"controller", c.Controller},
		{"token-file", c.TokenFile}, {"root-cert", c.RootCert}, {"hbone-addr", c.HBONEAddr}, {"node", c.Node},
	} {
		if f.v == "" {
			return fmt.Errorf("waypoint config: --%s is required", f.name)
		}
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("waypoint config: --trust-domain: %w", err)
	}
	if _, err := identity.WorkloadID(spiffeid.RequireTrustDomainFromString(c.TrustDomain), c.Namespace, c.Name); err != nil {
		return fmt.Errorf("waypoint config: --name/--namespace: %w", err)
	}
	return nil
}

// NodeFromTokenFile is the node name when none is given: the lab names each node's token
// file after the node.
func NodeFromTokenFile(path string) string { return filepath.Base(path) }

// Run runs the waypoint until ctx ends, then drains for DrainPeriod.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	bundle, err := identity.LoadBundle(td, cfg.RootCert)
	if err != nil {
		return err
	}
	cc, err := xdsclient.Dial(xdsclient.DialOptions{Address: cfg.Controller, Token: xdsclient.TokenFile(cfg.TokenFile), Bundle: bundle, ServerID: xdsclient.ControllerID(td)})
	if err != nil {
		return err
	}
	defer cc.Close()

	tp, shutdownTracing, err := tracerProvider(ctx, cfg)
	if err != nil {
		return err
	}
	defer shutdownTracing()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	certs := identity.NewManager(identity.ManagerOptions{Signer: xdsclient.NewCAClient(cc), Logger: log.With("component", "certs")})
	st := state.New()
	px, err := proxy.New(proxy.Config{
		State: st, Namespace: cfg.Namespace, Name: cfg.Name, TrustDomain: td,
		Certificate: certs.Certificate, Bundle: bundle,
		Logger: log.With("component", "proxy"), AccessLog: log.With("component", "access"),
		Metrics: proxy.NewMetrics(reg), Tracer: tp,
	})
	if err != nil {
		return err
	}
	var (
		mu      sync.Mutex
		pending = map[string]bool{}
		synced  bool
	)
	for _, t := range configv1.TypeURLs {
		pending[t] = true
	}
	client, err := xdsclient.NewClient(cc, xdsclient.Config{
		Node: xdsclient.NodeInfo{
			ID: "waypoint~" + cfg.Namespace + "~" + cfg.Name + "~" + cfg.Node, Node: cfg.Node, Kind: xdsclient.KindWaypoint,
			WaypointNamespace: cfg.Namespace, WaypointName: cfg.Name,
		},
		TypeURLs: configv1.TypeURLs,
		Logger:   log.With("component", "xds"),
		Handler: xdsclient.HandlerFunc(func(typeURL string, upserts map[string]xdsclient.Resource, removals []string) error {
			msgs := make(map[string]proto.Message, len(upserts))
			for k, r := range upserts {
				msgs[k] = r.Message
			}
			if err := px.Apply(typeURL, msgs, removals); err != nil {
				log.Warn("config rejected", "type", typeURL, "err", err)
				return err
			}
			mu.Lock()
			delete(pending, typeURL)
			synced = len(pending) == 0
			mu.Unlock()
			return nil
		}),
	})
	if err != nil {
		return err
	}
	// The certificate of the waypoint's identity is fetched ahead, so that readiness means
	// the first tunnel is served without waiting for the CA.
	certs.Prefetch(px.Identity())
	st.OnChange(func() { certs.Prefetch(px.Identity()) })
	ready := func() error {
		mu.Lock()
		ok := synced
		mu.Unlock()
		if !ok {
			return errors.New("config not received from the controller yet")
		}
		id := px.Identity()
		for _, c := range certs.Identities() {
			if c.ID == id && (c.State == dump.StateValid || c.State == dump.StateRenewing || c.State == dump.StateRetrying) {
				return nil
			}
		}
		return fmt.Errorf("no certificate for %s yet", id)
	}

	srv, err := hbone.NewServer(hbone.ServerConfig{
		ConnConfig: hbone.ConnConfig{Logger: log.With("component", "hbone")},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.Certificate(hello.Context(), px.Identity())
		},
		Bundle:         bundle,
		CheckAuthority: px.CheckAuthority,
		Handler:        px,
	})
	if err != nil {
		return err
	}
	// Every listener opens before anything runs, so that an address in use fails the start.
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	hln, err := net.Listen("tcp", cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("hbone listener: %w", err)
	}
	lns = append(lns, hln)
	var servers []*http.Server
	var httpLns []net.Listener
	for _, s := range []struct {
		name, addr string
		h          http.Handler
	}{
		{"admin", cfg.AdminAddr, adminHandler(st, px, certs)},
		{"metrics", cfg.MetricsAddr, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})},
		{"ready", cfg.ReadyAddr, health.ReadyHandler(ready)},
	} {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("%s listener: %w", s.name, err)
		}
		lns = append(lns, ln)
		httpLns = append(httpLns, ln)
		servers = append(servers, &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second})
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return certs.Run(gctx) })
	g.Go(func() error { return client.Run(gctx) })
	g.Go(func() error { return srv.Serve(hln) })
	for i, s := range servers {
		g.Go(func() error {
			if err := s.Serve(httpLns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http %s: %w", httpLns[i].Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainPeriod)
		_ = srv.Shutdown(dctx)
		cancel()
		_ = px.Close()
		for _, s := range servers {
			_ = s.Close()
		}
		return nil
	})
	log.Info("waypoint started", "gateway", cfg.Namespace+"/"+cfg.Name, "identity", px.Identity().String(),
		"hbone", hln.Addr().String(), "controller", cfg.Controller, "node", cfg.Node)
	err = g.Wait()
	log.Info("waypoint stopped")
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// tracerProvider returns the SDK with the configured exporter, or, without one, a no-op
// provider: spans cost nothing then, and trace context still passes through unchanged.
func tracerProvider(ctx context.Context, cfg Config) (trace.TracerProvider, func(), error) {
	var exp sdktrace.SpanExporter
	switch {
	case cfg.SpanExporter != nil:
		exp = cfg.SpanExporter
	case cfg.OTLPEndpoint != "":
		e, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint), otlptracegrpc.WithInsecure())
		if err != nil {
			return nil, nil, fmt.Errorf("otlp exporter: %w", err)
		}
		exp = e
	default:
		return noop.NewTracerProvider(), func() {}, nil
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(
			semconv.ServiceName("waypoint"),
			semconv.ServiceNamespace(cfg.Namespace),
			semconv.ServiceInstanceID(cfg.Namespace+"/"+cfg.Name),
		)),
	)
	return tp, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = tp.Shutdown(sctx)
		cancel()
	}, nil
}

func adminHandler(st *state.State, px *proxy.Proxy, certs *identity.Manager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		routes := map[string]json.RawMessage{}
		for k, t := range px.Routes() {
			if b, err := json.Marshal(t); err == nil {
				routes[k] = b
			}
		}
		d := dump.Waypoint{Identity: px.Identity().String(), Sections: st.Sections(), Certificates: certs.Identities(), Routes: routes}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
	})
	// Go's profiles, for the waypoint figures in docs/benchmarks.md.
	health.RegisterPprof(mux)
	return mux
}
