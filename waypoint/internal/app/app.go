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
	"ambit.dev/waypoint/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
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
	// PageOutAfter, when positive, is how long after start the pages of the binary that
	// only start-up used are given back (package pageout).
	PageOutAfter time.Duration
	// AccessLog turns on a log record per request and per opaque TCP connection
	// (component=access); off, the metrics still count every one.
	AccessLog bool
	Logger    *slog.Logger
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
	cc, bundle, err := xdsclient.DialController(td, cfg.RootCert, cfg.Controller, cfg.TokenFile, log)
	if err != nil {
		return err
	}
	defer cc.Close()

	tp, shutdownTracing, err := tracerProvider(ctx, cfg)
	if err != nil {
		return err
	}
	defer shutdownTracing()

	reg := proxyhost.NewRegistry()
	certs := identity.NewManager(identity.ManagerOptions{Signer: xdsclient.NewCAClientWithBundle(cc, bundle), Logger: log.With("component", "certs")})
	st := state.New()
	accessLog := slog.New(slog.DiscardHandler)
	if cfg.AccessLog {
		accessLog = log.With("component", "access")
	}
	px, err := proxy.New(proxy.Config{
		State: st, Namespace: cfg.Namespace, Name: cfg.Name, TrustDomain: td,
		Certificate: certs.Certificate, Bundle: bundle,
		Logger: log.With("component", "proxy"), AccessLog: accessLog,
		Metrics: proxy.NewMetrics(reg), Tracer: tp,
	})
	if err != nil {
		return err
	}
	sync := proxyhost.NewSyncTracker(configv1.TypeURLs)
	// A config stream that (re)connects may reach a controller restarted with another CA
	// (a root rotation): renew one certificate to pick up its bundle and signer.
	client, err := newXDSClient(cc, cfg, log, func() { certs.RetryNow(); certs.Refresh() }, sync.Handler(func(typeURL string, upserts map[string]proto.Message, removals []string) error {
		if err := px.Apply(typeURL, upserts, removals); err != nil {
			log.Warn("config rejected", "type", typeURL, "err", err)
			return err
		}
		return nil
	}))
	if err != nil {
		return err
	}
	// The certificate of the waypoint's identity is fetched ahead, so that readiness means
	// the first tunnel is served without waiting for the CA.
	certs.Prefetch(px.Identity())
	st.OnChange(func() { certs.Prefetch(px.Identity()) })

	srv, err := newHBONEServer(px, certs, bundle, log)
	if err != nil {
		return err
	}
	// Every listener opens before anything runs, so that an address in use fails the start.
	hln, hpc, err := listenHBONE(cfg.HBONEAddr)
	if err != nil {
		return err
	}
	ready := proxyhost.AllReady(sync.Ready, proxyhost.CertServing(certs.Identities, px.Identity))
	endpoints, err := proxyhost.Endpoints{
		AdminAddr: cfg.AdminAddr, MetricsAddr: cfg.MetricsAddr, ReadyAddr: cfg.ReadyAddr,
		Dump:    func() any { return configDump(st, px, certs, bundle, td) },
		Metrics: reg,
		Ready:   ready,
	}.Listen(ctx)
	if err != nil {
		hln.Close()
		hpc.Close()
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return certs.Run(gctx) })
	g.Go(func() error { return client.Run(gctx) })
	g.Go(func() error { return srv.Serve(hln) })
	g.Go(func() error { return srv.ServeH3(hpc) })
	g.Go(func() error { pageout.After(gctx, cfg.PageOutAfter, false, log); return nil })
	g.Go(func() error { memreturn.SettleWhenReady(gctx, ready); return nil })
	// The endpoints outlive gctx: they serve while the tunnels drain, and close after.
	g.Go(func() error { return endpoints.Run(context.WithoutCancel(gctx)) })
	g.Go(func() error {
		<-gctx.Done()
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainPeriod)
		_ = srv.Shutdown(dctx)
		cancel()
		_ = px.Close()
		endpoints.Close()
		return nil
	})
	log.Info("waypoint started", "gateway", cfg.Namespace+"/"+cfg.Name, "identity", px.Identity().String(),
		"hbone", hln.Addr().String(), "hbone_udp", hpc.LocalAddr().String(), "controller", cfg.Controller, "node", cfg.Node)
	err = g.Wait()
	log.Info("waypoint stopped")
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// newHBONEServer terminates the tunnels to the waypoint under its identity's certificate.
func newHBONEServer(px *proxy.Proxy, certs *identity.Manager, bundle x509bundle.Source, log *slog.Logger) (*hbone.Server, error) {
	return hbone.NewServer(hbone.ServerConfig{
		ConnConfig: hbone.ConnConfig{Logger: log.With("component", "hbone")},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.Certificate(hello.Context(), px.Identity())
		},
		Bundle:         bundle,
		CheckAuthority: px.CheckAuthority,
		Handler:        px,
	})
}

// newXDSClient subscribes to the waypoint's config: the controller sends the routes and
// policies of the Gateway it names.
func newXDSClient(cc grpc.ClientConnInterface, cfg Config, log *slog.Logger, onConnect func(), h xdsclient.Handler) (*xdsclient.Client, error) {
	return xdsclient.NewClient(cc, xdsclient.Config{
		Node: xdsclient.NodeInfo{
			ID: "waypoint~" + cfg.Namespace + "~" + cfg.Name + "~" + cfg.Node, Node: cfg.Node, Kind: xdsclient.KindWaypoint,
			WaypointNamespace: cfg.Namespace, WaypointName: cfg.Name,
			TunnelProtocols: []string{xdsclient.TunnelHBONE, xdsclient.TunnelHBONEH3}, // Serve and ServeH3
		},
		TypeURLs:  configv1.TypeURLs,
		Logger:    log.With("component", "xds"),
		Handler:   h,
		OnConnect: onConnect,
	})
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

// configDump is the waypoint's /config_dump.
func configDump(st *state.State, px *proxy.Proxy, certs *identity.Manager, bundle x509bundle.Source, td spiffeid.TrustDomain) dump.Waypoint {
	routes := map[string]json.RawMessage{}
	for k, t := range px.Routes() {
		if b, err := json.Marshal(t); err == nil {
			routes[k] = b
		}
	}
	return dump.Waypoint{Identity: px.Identity().String(), Sections: st.Sections(), Certificates: certs.Identities(), Routes: routes,
		TrustBundle: identity.DumpRoots(bundle, td)}
}

// listenHBONE opens HBONE's TCP listener and, on the UDP port of the same address and number,
// HBONE over HTTP/3 for peers the controller tells to use it (the waypoint reports it in its
// node metadata).
func listenHBONE(addr string) (net.Listener, net.PacketConn, error) {
	hln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("hbone listener: %w", err)
	}
	hpc, err := net.ListenPacket("udp", hln.Addr().String())
	if err != nil {
		hln.Close()
		return nil, nil, fmt.Errorf("hbone udp listener: %w", err)
	}
	return hln, hpc, nil
}
