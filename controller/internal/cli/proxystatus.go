package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"

	"ambit.dev/controller/internal/xds"
)

// DefaultControllerDebug is where `proxy-status` finds the controller's debug endpoint: its
// metrics and debug port, 15014, on this host.
const DefaultControllerDebug = "127.0.0.1:15014"

// Proxy sync states in proxy-status's STATUS column.
const (
	statusSynced = "SYNCED" // acknowledged the latest config
	statusStale  = "STALE"  // the latest config is sent, or about to be, and not yet acknowledged
	statusNacked = "NACKED" // rejected the last config of some type: see the NACK column
)

func proxyStatusCommand(o Options) *cobra.Command {
	var (
		addr   string
		labF   labFlags
		output *string
	)
	cmd := &cobra.Command{
		Use:     "proxy-status",
		Aliases: []string{"ps"},
		Short:   "List the proxies connected to the controller and whether their config is in sync",
		Long: `List every proxy (ztunnel or waypoint) connected to the controller: its node, its kind, the
Gateway a waypoint serves, and whether it has acknowledged the latest config:

  SYNCED   the proxy holds the latest config computed for it
  STALE    newer config is on its way or not yet acknowledged (normal for a moment after a change)
  NACKED   the proxy rejected the last config of some type; the NACK column has its error

The data comes from the controller's debug endpoint, GET http://<addr>/debug/proxies on its
metrics port (15014). In the local lab the lab's controller is used unless
--controller-debug is given.`,
		Example: `  # the controller on this host
  ambitctl proxy-status

  # a controller elsewhere, e.g. behind kubectl port-forward -n ambit-system deploy/ambit-controller 15014
  ambitctl proxy-status --controller-debug 127.0.0.1:15014 -o yaml

  # the local lab's controller
  ambitctl proxy-status --lab`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			if labF.use && cmd.Flags().Changed("controller-debug") {
				return fmt.Errorf("--lab and --controller-debug are mutually exclusive")
			}
			st, err := labF.state(!cmd.Flags().Changed("controller-debug"))
			if err != nil {
				return err
			}
			hint := "is the controller running, and is --controller-debug its metrics address (port 15014)?"
			if st != nil {
				if st.DebugAddr == "" {
					return fmt.Errorf("lab %q records no controller debug address in %s/state.json", st.Name, labF.dir)
				}
				addr = st.DebugAddr
				hint = fmt.Sprintf("is the lab %q still up? see `%s lab status`", st.Name, o.Invoked)
			}
			proxies, err := fetchProxies(cmd.Context(), o, addr, hint)
			if err != nil {
				return err
			}
			return printProxies(cmd.OutOrStdout(), *output, proxies, addr, o.Now())
		},
	}
	cmd.Flags().StringVar(&addr, "controller-debug", DefaultControllerDebug, "host:port of the controller's metrics and debug port")
	labF.register(cmd, false, "controller")
	output = outputFlag(cmd)
	return cmd
}

func fetchProxies(ctx context.Context, o Options, addr, hint string) ([]xds.ProxyStatus, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	body, err := get(ctx, o.HTTP, addr, xds.DebugPath, "the controller", hint)
	if err != nil {
		return nil, err
	}
	var out []xds.ProxyStatus
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("controller at %s: decode %s: %w", addr, xds.DebugPath, err)
	}
	return out, nil
}

func printProxies(w io.Writer, format string, proxies []xds.ProxyStatus, addr string, now time.Time) error {
	if format != outShort {
		if proxies == nil {
			proxies = []xds.ProxyStatus{}
		}
		return printData(w, format, proxies)
	}
	if len(proxies) == 0 {
		_, err := fmt.Fprintf(w, "No proxies are connected to the controller at %s.\n", addr)
		return err
	}
	t := newTable(w, "NAME", "NODE", "KIND", "GATEWAY", "STATUS", "VERSION", "AGE", "NACK")
	for _, p := range proxies {
		gw := ""
		if p.Name != "" {
			gw = p.Namespace + "/" + p.Name
		}
		age := ""
		if !p.ConnectedAt.IsZero() {
			age = duration.HumanDuration(now.Sub(p.ConnectedAt))
		}
		t.row(p.ID, p.Node, p.Kind, gw, proxyState(p), p.Version, age, p.LastNack)
	}
	return t.flush()
}

func proxyState(p xds.ProxyStatus) string {
	switch {
	case p.LastNack != "":
		return statusNacked
	case p.Acked:
		return statusSynced
	}
	return statusStale
}
