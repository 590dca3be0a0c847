package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
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
		target controllerTarget
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
metrics port (15014). Which controller, in this order: --controller-debug; the local lab's
(--lab, or when a lab is up); a cluster's (--kubeconfig or --context, or when $KUBECONFIG or
~/.kube/config exists), where ambitctl asks every ready replica through the API server's
port-forward (a CONTROLLER column says which replica holds each proxy); else the controller
on this host (127.0.0.1:15014).`,
		Example: `  # the cluster's controllers, through the API server
  ambitctl proxy-status --context prod

  # a controller at an address of its metrics port
  ambitctl proxy-status --controller-debug 127.0.0.1:15014 -o yaml

  # the local lab's controller
  ambitctl proxy-status --lab`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			c, addr, hint, err := target.resolve(cmd, o)
			if err != nil {
				return err
			}
			if c != nil {
				ctx, cancel := context.WithTimeout(cmd.Context(), forwardTimeout)
				defer cancel()
				proxies, err := clusterProxies(ctx, o, c)
				if err != nil {
					return err
				}
				return printProxies(cmd.OutOrStdout(), *output, proxies, "the controllers of "+c.where, o.Now())
			}
			proxies, err := fetchProxies(cmd.Context(), o, addr, hint)
			if err != nil {
				return err
			}
			return printProxies(cmd.OutOrStdout(), *output, proxies, addr, o.Now())
		},
	}
	target.register(cmd)
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
	replicas := false
	for _, p := range proxies {
		replicas = replicas || p.Controller != ""
	}
	headers := []string{"NAME", "NODE", "KIND", "GATEWAY", "STATUS", "VERSION", "AGE", "NACK"}
	if replicas {
		headers = append(headers, "CONTROLLER")
	}
	t := newTable(w, headers...)
	for _, p := range proxies {
		gw := ""
		if p.Name != "" {
			gw = p.Namespace + "/" + p.Name
		}
		age := ""
		if !p.ConnectedAt.IsZero() {
			age = duration.HumanDuration(now.Sub(p.ConnectedAt))
		}
		cells := []string{p.ID, p.Node, p.Kind, gw, proxyState(p), p.Version, age, p.LastNack}
		if replicas {
			cells = append(cells, p.Controller)
		}
		t.row(cells...)
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

// clusterProxies asks every ready replica of the cluster's controller for its proxies: a proxy
// holds one stream, to one replica, so the list is their union.
func clusterProxies(ctx context.Context, o Options, c *cluster) ([]xds.ProxyStatus, error) {
	pods, err := readyControllers(ctx, o, c)
	if err != nil {
		return nil, err
	}
	all := []xds.ProxyStatus{}
	for _, p := range pods {
		fw, err := forward(ctx, c, systemNamespace, p.Name, controllerDebugPort)
		if err != nil {
			return nil, err
		}
		proxies, err := fetchProxies(ctx, o, fw.addr, "through the port-forward to pod "+fw.pod)
		fw.close()
		if err != nil {
			return nil, err
		}
		for i := range proxies {
			proxies[i].Controller = p.Name
		}
		all = append(all, proxies...)
	}
	sort.SliceStable(all, func(i, j int) bool {
		if all[i].Node != all[j].Node {
			return all[i].Node < all[j].Node
		}
		return all[i].ID < all[j].ID
	})
	return all, nil
}

// count is how many of bs are true.
func count(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}
