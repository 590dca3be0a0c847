// Command waypoint is ambit's L7 proxy: one per ambit-waypoint Gateway. It terminates the
// HBONE tunnels ztunnels send it, applies L7 authorization, HTTPRoutes, retries, timeouts
// and outlier ejection, and forwards over HBONE under its own identity.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "ambit.dev/mesh/heapsample" // no heap profile samples unless GODEBUG asks (docs/operations.md)

	"ambit.dev/mesh/logging"
	"ambit.dev/mesh/maxprocs"
	"ambit.dev/mesh/memreturn"
	"ambit.dev/mesh/pageout"
	"ambit.dev/mesh/sysmon"
	"ambit.dev/waypoint/internal/app"
)

func main() {
	// First, before anything runs: the program starts again here with the monitor kept awake.
	awake := sysmon.KeepAwake()
	var (
		cfg      app.Config
		logLevel string
		workers  int
	)
	flag.StringVar(&cfg.Name, "name", "", "name of the Gateway this waypoint serves (required)")
	flag.StringVar(&cfg.Namespace, "namespace", "", "namespace of the Gateway (required)")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	flag.StringVar(&cfg.Controller, "controller", "127.0.0.1:15012", "controller gRPC address (config push and CA)")
	flag.StringVar(&cfg.TokenFile, "token-file", "", "file holding the token of the node the waypoint runs on (required)")
	flag.StringVar(&cfg.RootCert, "root-cert", "", "PEM file of the mesh's root certificates, trusted at start; the controller's CA then sends the bundle with every certificate (required)")
	flag.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "node the waypoint runs on; default $NODE_NAME, else the token file's name")
	flag.StringVar(&cfg.HBONEAddr, "hbone-addr", ":15008", "HBONE listen address")
	flag.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin listen address (/config_dump); empty disables")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", "Prometheus /metrics listen address; empty disables")
	flag.StringVar(&cfg.ReadyAddr, "ready-addr", ":15021", "/healthz/ready listen address; empty disables")
	flag.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "OTLP/gRPC collector host:port for request spans; empty exports none")
	flag.DurationVar(&cfg.DrainPeriod, "drain-period", 5*time.Second, "how long open requests may finish on shutdown")
	flag.DurationVar(&cfg.PageOutAfter, "page-out-after", pageout.DefaultDelay, pageout.FlagUsage)
	flag.IntVar(&workers, "workers", 0, maxprocs.FlagUsage)
	returnMemory := flag.Bool("return-memory", true, memreturn.FlagUsage)
	flag.BoolVar(&cfg.AccessLog, "access-log", false, "log a record per request and per opaque TCP connection (component=access, at info); off by default, as Istio's and Linkerd's proxies: the metrics count every request, and the records cost about 7% of the waypoint's CPU per request")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: waypoint [flags]\n\nambit's L7 proxy, one per ambit-waypoint Gateway: it terminates the HBONE tunnels\nztunnels send it, applies L7 authorization, routes, retries, timeouts, circuit breaking\nand mirroring, and forwards over HBONE under its own identity. Configuration and its\ncertificate come from the controller (--controller).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "waypoint: --log-level: %v\n", err)
		os.Exit(2)
	}
	if cfg.Node == "" && cfg.TokenFile != "" {
		cfg.Node = app.NodeFromTokenFile(cfg.TokenFile)
	}
	// Batched: one write per 100 ms of access log lines, WARN and above at once.
	var flushLog func() error
	cfg.Logger, flushLog = logging.New(os.Stderr, level, true)
	defer flushLog()
	if awake != nil {
		cfg.Logger.Warn("Go's system monitor keeps its default deep sleep", "err", awake)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := maxprocs.Start(ctx, workers, cfg.Logger); err != nil {
		fmt.Fprintf(os.Stderr, "waypoint: %v\n", err)
		os.Exit(2)
	}
	if *returnMemory {
		memreturn.Start(ctx, cfg.Logger)
	}
	if err := app.Run(ctx, cfg); err != nil && !errors.Is(err, context.Canceled) {
		cfg.Logger.Error("waypoint failed", "err", err) // ERROR: written at once
		os.Exit(1)
	}
}
