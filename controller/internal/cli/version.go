package cli

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Version is ambitctl's version, set at build time (-ldflags "-X
// ambit.dev/controller/internal/cli.Version=v0.1.0"); otherwise the VCS revision Go recorded,
// or "dev".
var Version = ""

func clientVersion() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 7 {
				return s.Value[:7]
			}
		}
	}
	return "dev"
}

func versionCommand(o Options) *cobra.Command {
	var f kubeFlags
	var client bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of ambitctl, the controller and the proxies",
		Long: `Print ambitctl's version and, from the cluster of the kubeconfig, the versions (image tags)
the controller, ztunnel, the node agent and the waypoints run, with how many pods run each.`,
		Example: `  ambitctl version
  ambitctl version --client`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "client: %s\n", clientVersion())
			if client {
				return nil
			}
			c, err := f.connect()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			return printVersions(ctx, w, c)
		},
	}
	f.register(cmd, 30*time.Second)
	cmd.Flags().BoolVar(&client, "client", false, "print ambitctl's version only")
	return cmd
}

func printVersions(ctx context.Context, w io.Writer, c *cluster) error {
	groups := []struct{ what, ns, selector string }{
		{"controller", systemNamespace, "app.kubernetes.io/name=" + controllerName},
		{"ztunnel", systemNamespace, "app.kubernetes.io/name=" + ztunnelName},
		{"node agent", systemNamespace, "app.kubernetes.io/name=" + nodeAgentName},
		{"waypoint", "", "app.kubernetes.io/name=ambit-waypoint"},
	}
	for _, g := range groups {
		pods, err := c.kube.CoreV1().Pods(g.ns).List(ctx, metav1.ListOptions{LabelSelector: g.selector})
		if err != nil {
			return err
		}
		count := map[string]int{}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || len(p.Spec.Containers) == 0 {
				continue
			}
			count[imageTag(p.Spec.Containers[0].Image)]++
		}
		if len(count) == 0 {
			fmt.Fprintf(w, "%s: not running\n", g.what)
			continue
		}
		var vs []string
		for v, n := range count {
			vs = append(vs, fmt.Sprintf("%s (%d %s)", v, n, plural(n, "pod", "pods")))
		}
		sort.Strings(vs)
		fmt.Fprintf(w, "%s: %s\n", g.what, strings.Join(vs, ", "))
	}
	return nil
}

func imageTag(image string) string {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return "latest"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
