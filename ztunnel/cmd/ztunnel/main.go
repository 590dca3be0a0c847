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

	"ambit.dev/ztunnel/internal/app"
)

func main() {
	var cfg app.Config
	level := new(slog.LevelVar)
	flag.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "name of the node this ztunnel serves (env NODE_NAME)")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	flag.StringVar(&cfg.Controller, "controller", "127.0.0.1:15012", "controller gRPC address (config push and CA)")
	flag.StringVar(&cfg.TokenFile, "token-file", "", "file holding this node's token for the controller")
	flag.StringVar(&cfg.RootCert, "root-cert", "", "PEM file with the mesh root certificate")
	flag.StringVar(&cfg.StateDir, "state-dir", "/var/lib/ambit/ztunnel", "directory for the records of served pods")
	flag.StringVar(&cfg.NodeAPI, "node-api", "/var/run/ambit/ztunnel.sock", "unix socket of the node API through which pods are handed over")
	flag.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin listener (/config_dump); keep it on loopback")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", "Prometheus metrics listener")
	flag.StringVar(&cfg.ReadyAddr, "ready-addr", ":15021", "readiness listener (/healthz/ready)")
	flag.TextVar(level, "log-level", new(slog.LevelVar), "log level: debug, info, warn or error")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: ztunnel [flags]\n\nambit's node proxy. Pods are handed over through the node API (--node-api);\nconfiguration and certificates come from the controller (--controller).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("ztunnel failed", "err", err)
		os.Exit(1)
	}
}
