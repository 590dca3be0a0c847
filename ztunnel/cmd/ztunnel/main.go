// Command ztunnel is ambit's node proxy: it captures the traffic of the enrolled pods on its
// node and carries it between nodes in HBONE tunnels under each pod's SPIFFE identity.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	_ "ambit.dev/mesh/heapsample" // no heap profile samples unless GODEBUG asks (docs/operations.md)

	"ambit.dev/mesh/gcpercent"
	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/logging"
	"ambit.dev/mesh/maxprocs"
	"ambit.dev/mesh/memreturn"
	"ambit.dev/mesh/pageout"
	"ambit.dev/mesh/sysmon"
	"ambit.dev/ztunnel/internal/app"
)

func main() {
	// First, before anything runs: the program starts again here with the monitor kept awake.
	awake := sysmon.KeepAwake()
	var cfg app.Config
	var workers int
	level := new(slog.LevelVar)
	flag.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "name of the node this ztunnel serves (env NODE_NAME)")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	flag.StringVar(&cfg.Controller, "controller", "127.0.0.1:15012", "controller gRPC address (config push and CA)")
	flag.StringVar(&cfg.TokenFile, "token-file", "", "file holding this node's token for the controller")
	flag.StringVar(&cfg.RootCert, "root-cert", "", "PEM file of the mesh's root certificates, trusted at start; the controller's CA then sends the bundle with every certificate")
	flag.StringVar(&cfg.StateDir, "state-dir", "/var/lib/ambit/ztunnel", "directory for the records of served pods")
	flag.StringVar(&cfg.NodeAPI, "node-api", "/var/run/ambit/ztunnel.sock", "unix socket of the node API through which pods are handed over")
	flag.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin listener (/config_dump); keep it on loopback")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", "Prometheus metrics listener")
	flag.StringVar(&cfg.ReadyAddr, "ready-addr", ":15021", "readiness listener (/healthz/ready)")
	flag.DurationVar(&cfg.DrainPeriod, "drain-period", app.DefaultDrainPeriod, "after handing over (or on shutdown), how long open connections may go on before they are closed")
	flag.DurationVar(&cfg.HandoverGrace, "handover-grace", app.DefaultHandoverGrace, "on SIGTERM, how long to keep serving while waiting for a new ztunnel to take over before draining anyway")
	flag.StringVar(&cfg.LocalConfig, "local-config", "", "standalone mode: read the mesh from this YAML/JSON file (see examples/ztunnel-local.yaml) instead of the controller, and sign certificates with a local root; --controller, --token-file and --root-cert are then unused")
	flag.StringVar(&cfg.LocalCADir, "local-ca-dir", "", "standalone mode: directory of the self-signed root (root-cert.pem, root-key.pem), created on first start (default <state-dir>/ca); ztunnels that must trust each other share it")
	flag.DurationVar(&cfg.CaptureCheck, "capture-check-interval", app.DefaultCaptureCheck, "how often every captured pod's iptables rules are checked and repaired if changed behind ztunnel's back; negative: never")
	flag.DurationVar(&cfg.HBONEIdleTimeout, "hbone-idle-timeout", hbone.DefaultIdleTimeout, "close an HBONE connection (HTTP/2 or HTTP/3, to or from a peer) that has carried no stream for this long")
	flag.Float64Var(&cfg.H3LossThreshold, "h3-loss-threshold", hbone.DefaultH3LossThreshold, "HTTP/3 tunnels: while a tunnel loses at least this share of its packets (and at least 3, over windows of a second or more), it sends each short QUIC packet twice, so that a request or response of one packet survives a loss without waiting for a retransmission; 0 turns it off (docs/protocol.md, Loss shield)")
	flag.DurationVar(&cfg.PageOutAfter, "page-out-after", pageout.DefaultDelay, pageout.FlagUsage)
	flag.IntVar(&workers, "workers", 0, maxprocs.FlagUsage)
	returnMemory := flag.Bool("return-memory", true, memreturn.FlagUsage)
	flag.TextVar(level, "log-level", new(slog.LevelVar), "log level: debug, info, warn or error")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: ztunnel [flags]\n\nambit's node proxy. Pods are handed over through the node API (--node-api);\nconfiguration and certificates come from the controller (--controller), or, standalone,\nfrom a local file and a local root (--local-config, --local-ca-dir).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	gcpercent.Apply(gcpercent.Ztunnel)
	// Batched: one write per 100 ms of access log lines, WARN and above at once.
	var flushLog func() error
	cfg.Logger, flushLog = logging.New(os.Stderr, level, false)
	defer flushLog()
	if awake != nil {
		cfg.Logger.Warn("Go's system monitor keeps its default deep sleep", "err", awake)
	}
	// SIGTERM (Kubernetes) waits --handover-grace for a successor before draining; SIGINT
	// (an operator, or a lab going down) drains at once.
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if s := <-sigs; s == syscall.SIGINT {
			stop(app.ErrStopNow)
		} else {
			stop(context.Canceled)
		}
	}()
	if err := maxprocs.Start(ctx, workers, cfg.Logger); err != nil {
		fmt.Fprintf(os.Stderr, "ztunnel: %v\n", err)
		os.Exit(2)
	}
	if *returnMemory {
		memreturn.Start(ctx, cfg.Logger)
	}
	if err := app.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("ztunnel failed", "err", err) // ERROR: written at once
		os.Exit(1)
	}
}
