// Command ambit-node-agent is ambit's node agent (node/internal/agent): it installs the CNI
// plugin on its node and registers the node's enrolled pods with ztunnel. Run as ambit-cni,
// or with CNI_COMMAND set, it is the CNI plugin itself: the agent copies its own executable
// into the host's CNI bin dir, so one image carries both.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"ambit.dev/node/internal/agent"
	"ambit.dev/node/internal/cniplugin"
)

func main() {
	if filepath.Base(os.Args[0]) == cniplugin.Type || os.Getenv("CNI_COMMAND") != "" {
		os.Exit(cniplugin.Main(os.Getenv, os.Stdin, os.Stdout, os.Stderr))
	}
	var cfg agent.Config
	var exclude string
	level := new(slog.LevelVar)
	flag.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "name of this node (env NODE_NAME)")
	flag.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", "ambit-system"), "namespace of the agent's DaemonSet (env POD_NAMESPACE)")
	flag.StringVar(&cfg.DaemonSet, "daemonset", "ambit-node-agent", "the agent's DaemonSet: when it is deleted, the agent releases every pod from ztunnel on termination (uninstall)")
	flag.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "the host's CNI plugin directory (mounted at the same path)")
	flag.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the host's CNI config directory (mounted at the same path)")
	flag.StringVar(&cfg.PluginBinary, "plugin-binary", "/proc/self/exe", "the CNI plugin binary to install as ambit-cni")
	flag.StringVar(&cfg.NodeAPI, "node-api", "/var/run/ambit/ztunnel.sock", "ztunnel's node API socket (the same path on the host)")
	flag.StringVar(&cfg.NetnsDir, "netns-dir", "/var/run/netns", "where the container runtime keeps the pods' network namespaces (the same path on the host)")
	flag.StringVar(&cfg.ProcRoot, "proc", "/proc", "the host's /proc (the agent runs with hostPID)")
	flag.StringVar(&exclude, "exclude-namespaces", "kube-system,ambit-system", "comma-separated namespaces the plugin never enrols nor looks up")
	flag.StringVar(&cfg.CAFile, "ca-file", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "the API server's CA, for the plugin's kubeconfig")
	flag.StringVar(&cfg.TokenFile, "token-file", "/var/run/secrets/kubernetes.io/serviceaccount/token", "the agent's ServiceAccount token, for the plugin's kubeconfig")
	flag.StringVar(&cfg.ReadyAddr, "ready-addr", ":15022", "readiness listener (/ready: the CNI plugin is installed)")
	flag.DurationVar(&cfg.Resync, "resync", 0, "how often everything is checked without an event (default 10s)")
	flag.TextVar(level, "log-level", new(slog.LevelVar), "log level: debug, info, warn or error")
	flag.Parse()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	for ns := range strings.SplitSeq(exclude, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			cfg.ExcludeNamespaces = append(cfg.ExcludeNamespaces, ns)
		}
	}
	// The plugin runs in the host's network namespace: the API server's Service address
	// reaches it there as from this pod.
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	cfg.Server = "https://" + net.JoinHostPort(host, port)
	rc, err := rest.InClusterConfig()
	if err == nil {
		cfg.Client, err = kubernetes.NewForConfig(rc)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-node-agent:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("node agent failed", "err", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
