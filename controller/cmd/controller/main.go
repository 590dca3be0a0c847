// Command controller is ambit's control plane: it watches Kubernetes (or, locally, a folder
// of the same YAML objects), keeps the config model, signs workload certificates and pushes
// config to every ztunnel and waypoint.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"ambit.dev/controller/internal/app"
	"k8s.io/klog/v2"
)

func main() {
	var cfg app.Config
	var level slog.Level
	var logJSON bool
	var tokenDir string
	flag.StringVar(&cfg.ConfigDir, "config-dir", "", "read Kubernetes objects from the YAML files in `DIR` (local mode) instead of the API server")
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig `file`; empty means in-cluster config")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
	flag.StringVar(&cfg.CADir, "ca-dir", "", "`DIR` holding the CA root key and certificate (root-cert.pem, root-key.pem), created on first start, and while the root rotates a signing CA (ca-cert.pem, ca-key.pem, cert-chain.pem) and more trusted roots (extra-roots.pem); trust-bundle.pem there is written at every start for the proxies' --root-cert; folder mode's store: empty there keeps the root in memory")
	flag.StringVar(&cfg.CASecret, "ca-secret", "", "Kubernetes mode: Secret `[NAMESPACE/]NAME` holding the CA root, created on first start (default ambit-ca in the controller's namespace, $POD_NAMESPACE or ambit-system)")
	flag.DurationVar(&cfg.CertTTL, "cert-ttl", 24*time.Hour, "lifetime of the workload certificates the CA signs (proxies renew them at half-life, so they ride out a controller outage of up to this long); between 10s and 168h")
	flag.StringVar(&cfg.GRPCAddr, "grpc-addr", ":15012", "config push and CA gRPC address")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15014", "address of /metrics, /healthz and /readyz (\"-\" disables)")
	flag.StringVar(&tokenDir, "token-dir", "", "folder mode: `DIR` with one token file per node (file name = node name) that proxies authenticate with")
	flag.Func("waypoint-exec", "folder mode: run the waypoints of the ambit-waypoint Gateways with `COMMAND` (split at spaces, no quoting), called with one NAMESPACE/NAME=FOR argument per waypoint whenever that list changes and every 10s; the lab passes `ambitctl lab waypoints-sync`", func(v string) error {
		cfg.WaypointExec = strings.Fields(v)
		return nil
	})
	flag.StringVar(&cfg.WaypointTemplate, "waypoint-template", "", "Kubernetes mode: `FILE` of the template of each waypoint's ServiceAccount, Deployment and Service (default: the built-in copy of deploy/waypoint/waypoint.yaml)")
	flag.StringVar(&cfg.WaypointImage, "waypoint-image", app.DefaultWaypointImage, "Kubernetes mode: `IMAGE` the waypoint Deployments run")
	flag.StringVar(&cfg.WaypointController, "waypoint-controller", "", "Kubernetes mode: controller gRPC `HOST:PORT` the waypoints dial (default ambit-controller.<controller's namespace>.svc:15012)")
	flag.BoolVar(&cfg.LeaderElect, "leader-elect", false, "run leader election on a Lease in the controller's namespace (Kubernetes mode)")
	flag.StringVar(&cfg.TunnelProtocol, "tunnel-protocol", "hbone", "mesh-wide default of the namespace label ambit.dev/tunnel-protocol: hbone, or hbone-h3 for HBONE over HTTP/3 (UDP 15008) to the workloads of nodes whose ztunnel serves it")
	flag.DurationVar(&cfg.Debounce, "debounce", 20*time.Millisecond, "quiet time after an object change before config is recomputed")
	flag.TextVar(&level, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	flag.BoolVar(&logJSON, "log-json", false, "log in JSON instead of text")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: controller [flags]\n\nambit's control plane: it watches Kubernetes (--kubeconfig, or in-cluster) or, locally,\na folder of the same YAML objects (--config-dir), signs workload certificates and pushes\neach ztunnel and waypoint its config over delta xDS.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "controller: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	cfg.NewPushServer, cfg.NewCAService = app.GRPCServices(tokenDir)

	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if logJSON {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	log := slog.New(h)
	// client-go (informers, leader election) logs through klog: into the same handler.
	klog.SetSlogLogger(log.With("component", "client-go"))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.Run(ctx, cfg, log); err != nil {
		log.Error("controller failed", "error", err)
		os.Exit(1)
	}
}
