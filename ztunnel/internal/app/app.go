// Package app assembles ztunnel: config from the controller over delta xDS, certificates
// for the node's pods from the controller's CA, the pods handed over through the node API,
// and the admin, metrics and readiness endpoints.
package app

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/identity"
	"ambit.dev/proto/nodeapi"
	"ambit.dev/proto/xds"
	"ambit.dev/ztunnel/internal/inpod"
	"ambit.dev/ztunnel/internal/proxy"
	"ambit.dev/ztunnel/internal/state"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protojson"
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
	Logger                            *slog.Logger
}

func (c Config) validate() error {
	for _, f := range []struct{ name, v string }{
		{"node", c.Node}, {"controller", c.Controller}, {"token-file", c.TokenFile}, {"root-cert", c.RootCert},
		{"state-dir", c.StateDir}, {"node-api", c.NodeAPI},
	} {
		if f.v == "" {
			return fmt.Errorf("ztunnel config: --%s is required", f.name)
		}
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("ztunnel config: --trust-domain: %w", err)
	}
	return nil
}

// LoadBundle reads a PEM file of root certificates into a bundle for td.
func LoadBundle(td spiffeid.TrustDomain, path string) (*x509bundle.Bundle, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read root certificate: %w", err)
	}
	var roots []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("root certificate %s: %w", path, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("root certificate %s: no PEM certificate in it", path)
	}
	return x509bundle.FromX509Authorities(td, roots), nil
}

// Run runs ztunnel until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	bundle, err := LoadBundle(td, cfg.RootCert)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	cc, err := xds.Dial(xds.DialOptions{Address: cfg.Controller, Token: xds.TokenFile(cfg.TokenFile), Bundle: bundle, ServerID: xds.ControllerID(td)})
	if err != nil {
		return err
	}
	defer cc.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	certs := identity.NewManager(identity.ManagerOptions{Signer: xds.NewCAClient(cc), Logger: log.With("component", "certs")})
	st := state.New()
	node := &proxy.Node{State: st, Certs: certs.Certificate, Bundle: bundle, TrustDomain: td, Logger: log, Metrics: proxy.NewMetrics(reg)}
	pods := inpod.NewManager(node, st, inpod.Netns{}, cfg.StateDir, log.With("component", "inpod"))

	var synced atomic.Bool
	pending := map[string]bool{}
	for _, t := range configv1.TypeURLs {
		pending[t] = true
	}
	client, err := xds.NewClient(cc, xds.Config{
		Node:     xds.NodeInfo{ID: "ztunnel~" + cfg.Node, Node: cfg.Node, Kind: xds.KindZtunnel},
		TypeURLs: configv1.TypeURLs,
		Logger:   log.With("component", "xds"),
		Handler: xds.HandlerFunc(func(typeURL string, upserts map[string]xds.Resource, removals []string) error {
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
	reconcile := make(chan struct{}, 1)
	st.OnChange(func() {
		select {
		case reconcile <- struct{}{}:
		default:
		}
	})

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return certs.Run(ctx) })
	g.Go(func() error { return client.Run(ctx) })
	g.Go(func() error {
		// Pods are restored once the first config is in, so that they are captured with
		// the right identity rather than left waiting.
		for !synced.Load() {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err := pods.Restore(ctx); err != nil {
			log.Warn("restore pods", "err", err)
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-reconcile:
				pods.Reconcile(ctx)
			}
		}
	})
	ready := func() error {
		if !synced.Load() {
			return errors.New("config not received from the controller yet")
		}
		for _, c := range certs.Identities() {
			if c.State != identity.StateValid && c.State != identity.StateRenewing && c.State != identity.StateRetrying {
				return fmt.Errorf("certificate for %s is %s", c.ID, c.State)
			}
		}
		return nil
	}
	serve := func(name, addr string, h http.Handler) {
		g.Go(func() error { return serveHTTP(ctx, name, "tcp", addr, h) })
	}
	serve("admin", cfg.AdminAddr, adminHandler(st, certs, pods))
	serve("metrics", cfg.MetricsAddr, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	serve("ready", cfg.ReadyAddr, readyHandler(ready))
	_ = os.Remove(cfg.NodeAPI)
	if err := os.MkdirAll(filepath.Dir(cfg.NodeAPI), 0o755); err != nil {
		return err
	}
	g.Go(func() error { return serveHTTP(ctx, "node-api", "unix", cfg.NodeAPI, pods.Handler()) })
	log.Info("ztunnel started", "node", cfg.Node, "controller", cfg.Controller, "node_api", cfg.NodeAPI)
	err = g.Wait()
	pods.Close()
	return err
}

func serveHTTP(ctx context.Context, name, network, addr string, h http.Handler) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("%s listener: %w", name, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func readyHandler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// ConfigDump is what /config_dump returns and `ambitctl ztunnel-config` reads.
type ConfigDump struct {
	Workloads    []json.RawMessage   `json:"workloads"`
	Services     []json.RawMessage   `json:"services"`
	Policies     []json.RawMessage   `json:"policies"`
	Waypoints    []json.RawMessage   `json:"waypoints"`
	Certificates []identity.CertInfo `json:"certificates"`
	Pods         []nodeapi.PodStatus `json:"pods"`
}

func adminHandler(st *state.State, certs *identity.Manager, pods *inpod.Manager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		dump := ConfigDump{Certificates: certs.Identities(), Pods: pods.Pods()}
		all := st.Dump()
		for typeURL, dst := range map[string]*[]json.RawMessage{
			configv1.WorkloadTypeURL: &dump.Workloads, configv1.ServiceTypeURL: &dump.Services,
			configv1.AuthorizationTypeURL: &dump.Policies, configv1.WaypointTypeURL: &dump.Waypoints,
		} {
			*dst = []json.RawMessage{}
			for _, m := range all[typeURL] {
				b, err := protojson.Marshal(m)
				if err == nil {
					*dst = append(*dst, b)
				}
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(dump)
	})
	return mux
}
