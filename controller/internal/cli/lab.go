package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"ambit.dev/controller/lab"
	"github.com/spf13/cobra"
)

// labCommand is `ambitctl lab up|down|status|apply|delete|call|wait|restart-ztunnel` and the
// hidden `lab serve` (the sample applications inside the pods) and `lab waypoints-sync` (run by
// the lab's controller).
func labCommand(o Options) *cobra.Command {
	var dir string
	labCmd := &cobra.Command{
		Use:   "lab",
		Short: "Run the mesh on this machine: network namespaces as pods, one ztunnel per lab node",
		Long: `The local lab runs the whole mesh on one Linux machine (root needed). Each pod is a
network namespace joined to a bridge by a veth pair; each lab node has its own ztunnel; the
controller reads a folder of Kubernetes YAML that the lab fills from the lab file and from
'lab apply'. Everything the lab makes is recorded in its state dir and removed by 'lab down',
also after a crash.`,
		Example: `  make build
  sudo bin/ambitctl lab up -f examples/lab.yaml
  bin/ambitctl lab status
  bin/ambitctl lab call demo/client http://10.77.2.2:8080/
  bin/ambitctl namespace enable demo
  bin/ambitctl lab apply -f examples/policies/deny-client.yaml
  bin/ambitctl lab down`,
	}
	labCmd.PersistentFlags().StringVar(&dir, "lab-dir", lab.DefaultStateDir, "state dir of the lab")

	labCmd.AddCommand(
		labUp(o, &dir), labDown(&dir), labStatus(&dir), labApply(&dir), labDelete(&dir),
		labCall(&dir), labServe(), labWait(&dir), labRestart(&dir), labSyncWaypoints(&dir),
	)
	return labCmd
}

// labUp is `ambitctl lab up`.
func labUp(o Options, dir *string) *cobra.Command {
	var file, binDir, prefix string
	var portBase int
	up := &cobra.Command{
		Use:   "up -f LAB.yaml",
		Short: "Bring the lab up (idempotent: a lab that is up is checked and kept)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := lab.LoadTopology(file)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err = lab.Up(ctx, t, lab.Options{Dir: *dir, BinDir: binDir, Prefix: prefix, PortBase: portBase, Invoked: o.Invoked, Out: cmd.OutOrStdout()})
			return err
		},
	}
	up.Flags().StringVarP(&file, "file", "f", "examples/lab.yaml", "lab file: nodes, pods and their apps, the folder of config objects")
	up.Flags().StringVar(&binDir, "bin-dir", "", "directory holding the controller and ztunnel binaries (default: beside ambitctl)")
	up.Flags().StringVar(&prefix, "prefix", lab.DefaultPrefix, "prefix of the lab's bridge, links and namespaces")
	up.Flags().IntVar(&portBase, "port-base", 15000, "host ports: controller at +12/+14, node i's ztunnel at +100*(i+1)")
	return up
}

// labDown is `ambitctl lab down`.
func labDown(dir *string) *cobra.Command {
	var prefix string
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove every process, namespace, link and file of the lab, also after a crash",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.Down(cmd.Context(), lab.Options{Dir: *dir, Prefix: prefix, Out: cmd.OutOrStdout()})
		},
	}
	down.Flags().StringVar(&prefix, "prefix", lab.DefaultPrefix, "prefix of the lab's bridge, links and namespaces (used when no record is left)")
	return down
}

// labStatus is `ambitctl lab status`.
func labStatus(dir *string) *cobra.Command {
	var output string
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the lab's processes and pods; exit status 1 when something is down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := lab.GetStatus(cmd.Context(), *dir)
			if err != nil {
				return err
			}
			if err := printStatus(cmd.OutOrStdout(), s, output); err != nil {
				return err
			}
			if !s.Healthy() {
				return fmt.Errorf("lab %s is not healthy", s.Name)
			}
			return nil
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "short", "output format: short, json or yaml")
	return status
}

// labApply is `ambitctl lab apply`.
func labApply(dir *string) *cobra.Command {
	var objFile string
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Give the lab's controller the Kubernetes objects of FILE (checked first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := lab.Apply(*dir, objFile)
			if err != nil {
				return err
			}
			for _, o := range objs {
				fmt.Fprintf(cmd.OutOrStdout(), "%s applied\n", o)
			}
			return nil
		},
	}
	apply.Flags().StringVarP(&objFile, "file", "f", "", "YAML file of Kubernetes objects")
	_ = apply.MarkFlagRequired("file")
	return apply
}

// labDelete is `ambitctl lab delete`.
func labDelete(dir *string) *cobra.Command {
	var objFile string
	del := &cobra.Command{
		Use:   "delete -f FILE",
		Short: "Take the objects of a file applied with 'lab apply' away again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Delete(*dir, objFile); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", objFile)
			return nil
		},
	}
	del.Flags().StringVarP(&objFile, "file", "f", "", "YAML file given to 'lab apply'")
	_ = del.MarkFlagRequired("file")
	return del
}

// labCall is `ambitctl lab call`.
func labCall(dir *string) *cobra.Command {
	var timeout time.Duration
	var method string
	var count int
	call := &cobra.Command{
		Use:   "call NAMESPACE/POD URL",
		Short: "Make HTTP requests from inside a lab pod and print the answer, or a tally",
		Long: `Make an HTTP request from inside a lab pod's network namespace: the request leaves the pod
as its own traffic would, through its ztunnel when the pod is in the mesh. The exit status is
1 when the request fails or the answer is not 2xx.

With --count N, make N requests, one connection each, and print how many each pod answered
(the sample apps name themselves in X-Ambit-Pod) and with which status: how a traffic split
shows. The exit status is then 1 only if a request got no answer at all.`,
		Example: `  bin/ambitctl lab call demo/client http://10.77.2.2:8080/
  bin/ambitctl lab call demo/client http://10.96.0.10/ --count 100
  bin/ambitctl lab call demo/client http://10.96.0.10/admin --method DELETE`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.LoadState(*dir)
			if err != nil {
				return err
			}
			ns, name, ok := strings.Cut(args[0], "/")
			if !ok {
				return fmt.Errorf("pod %q: want NAMESPACE/POD", args[0])
			}
			pod, err := st.Pod(ns, name)
			if err != nil {
				return err
			}
			client := lab.Client(pod.NetNS, timeout)
			do := func() (*http.Response, error) {
				req, err := http.NewRequestWithContext(cmd.Context(), method, args[1], nil)
				if err != nil {
					return nil, err
				}
				resp, err := client.Do(req)
				if err != nil {
					if errors.Is(err, io.EOF) || strings.Contains(err.Error(), "server closed") || strings.Contains(err.Error(), "connection reset") {
						return nil, fmt.Errorf("from %s: the connection was closed before any answer (refused by the mesh? the destination ztunnel's log says why): %w", args[0], err)
					}
					return nil, fmt.Errorf("from %s: %w", args[0], err)
				}
				return resp, nil
			}
			if count > 0 {
				return tally(cmd.OutOrStdout(), count, do)
			}
			resp, err := do()
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("from %s: reading the answer: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s", body)
			if len(body) > 0 && body[len(body)-1] != '\n' {
				fmt.Fprintln(cmd.OutOrStdout())
			}
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("from %s: %s", args[0], resp.Status)
			}
			return nil
		},
	}
	call.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	call.Flags().StringVarP(&method, "method", "X", http.MethodGet, "HTTP method")
	call.Flags().IntVar(&count, "count", 0, "make this many requests and print a tally of who answered")
	return call
}

// labServe is `ambitctl lab serve (hidden)`.
func labServe() *cobra.Command {
	var kind, pod, nodeAPI string
	var port int
	serve := &cobra.Command{
		Use:    "serve",
		Short:  "Run a sample application (the lab runs it inside a pod)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			return lab.ServeApp(ctx, kind, port, pod, nodeAPI, log)
		},
	}
	serve.Flags().StringVar(&kind, "kind", "http-echo", "application: "+strings.Join(lab.AppKinds, " or "))
	serve.Flags().IntVar(&port, "port", 8080, "port to listen on")
	serve.Flags().StringVar(&pod, "pod", "", "namespace/name of the pod, reported by the HTTP echo")
	serve.Flags().StringVar(&nodeAPI, "node-api", "", "node API socket of the pod's ztunnel (caller identity lookup)")
	return serve
}

// labWait is `ambitctl lab wait`.
func labWait(dir *string) *cobra.Command {
	var timeout time.Duration
	var waitNS string
	var released bool
	wait := &cobra.Command{
		Use:   "wait --namespace NS [--released]",
		Short: "Wait until every pod of a namespace is captured by its ztunnel (or released)",
		Example: `  bin/ambitctl namespace enable demo && bin/ambitctl lab wait --namespace demo
  bin/ambitctl namespace disable demo && bin/ambitctl lab wait --namespace demo --released`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.WaitCaptured(cmd.Context(), *dir, waitNS, !released, timeout); err != nil {
				return err
			}
			state := "captured by their ztunnels"
			if released {
				state = "released by their ztunnels"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pods of namespace %s: %s\n", waitNS, state)
			return nil
		},
	}
	wait.Flags().StringVarP(&waitNS, "namespace", "n", "", "namespace whose pods to wait for")
	wait.Flags().BoolVar(&released, "released", false, "wait until the pods are released instead")
	wait.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	_ = wait.MarkFlagRequired("namespace")
	return wait
}

// labRestart is `ambitctl lab restart-ztunnel`.
func labRestart(dir *string) *cobra.Command {
	var binDir string
	restart := &cobra.Command{
		Use:   "restart-ztunnel NODE",
		Short: "Replace a node's ztunnel without dropping connections (hand-over, then drain)",
		Long: `Start a new ztunnel for NODE beside the running one; the new one takes the pods over
(SO_REUSEPORT hand-over, see docs/operations.md), and once it is ready the old one gets SIGTERM,
drains its open connections and exits.`,
		Example: `  bin/ambitctl lab restart-ztunnel node-b`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := lab.RestartZtunnel(cmd.Context(), lab.Options{Dir: *dir, BinDir: binDir, Out: cmd.OutOrStdout()}, args[0], nil)
			return err
		},
	}
	restart.Flags().StringVar(&binDir, "bin-dir", "", "directory holding the ztunnel binary (default: beside ambitctl)")
	return restart
}

// labSyncWaypoints is `ambitctl lab waypoints-sync (hidden)`.
func labSyncWaypoints(dir *string) *cobra.Command {
	var binDir string
	syncWP := &cobra.Command{
		Use:   "waypoints-sync [NAMESPACE/NAME=FOR ...]",
		Short: "Make the lab's waypoint pods exactly the ones listed (the controller's --waypoint-exec runs this)",
		Long: `Run by the lab's controller (its --waypoint-exec) with one NAMESPACE/NAME=FOR argument per
ambit-waypoint Gateway, whenever that list changes and every 10 s: starts the waypoints that do
not run, each in a pod of its own on the lab's first node, restarts those that died, stops those
whose Gateway is gone, and records each waypoint's address in its Gateway's status.`,
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var want []lab.WaypointSpec
			for _, a := range args {
				w, err := lab.ParseWaypointArg(a)
				if err != nil {
					return err
				}
				want = append(want, w)
			}
			return lab.SyncWaypoints(cmd.Context(), lab.Options{Dir: *dir, BinDir: binDir, Out: cmd.OutOrStdout()}, want)
		},
	}
	syncWP.Flags().StringVar(&binDir, "bin-dir", "", "directory holding the waypoint binary (default: beside ambitctl)")
	return syncWP
}

// tally makes n requests with do and prints how many each pod answered, by status.
func tally(w io.Writer, n int, do func() (*http.Response, error)) error {
	type key struct {
		pod    string
		status int
	}
	counts := map[key]int{}
	var failed []error
	for i := 0; i < n; i++ {
		resp, err := do()
		if err != nil {
			failed = append(failed, err)
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		pod := resp.Header.Get("X-Ambit-Pod")
		if pod == "" {
			pod = "(no pod: answered by the mesh)"
		}
		counts[key{pod, resp.StatusCode}]++
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].pod != keys[j].pod {
			return keys[i].pod < keys[j].pod
		}
		return keys[i].status < keys[j].status
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ANSWERED BY\tSTATUS\tREQUESTS\tSHARE\n")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f%%\n", k.pod, k.status, counts[k], 100*float64(counts[k])/float64(n))
	}
	if len(failed) > 0 {
		fmt.Fprintf(tw, "no answer\t-\t%d\t%.1f%%\n", len(failed), 100*float64(len(failed))/float64(n))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d requests got no answer; the first: %w", len(failed), n, failed[0])
	}
	return nil
}

// printStatus prints the lab status as a table, or as JSON or YAML.
func printStatus(w io.Writer, s *lab.Status, format string) error {
	switch format {
	case outJSON, outYAML:
		return printData(w, format, s)
	case outShort, "":
	default:
		return fmt.Errorf("output %q: want short, json or yaml", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PROCESS\tPID\tSTATE\n")
	fmt.Fprintf(tw, "controller\t%d\t%s\n", s.Controller.PID, procState(s.Controller))
	for _, n := range s.Nodes {
		fmt.Fprintf(tw, "ztunnel %s\t%d\t%s\n", n.Name, n.Ztunnel.PID, procState(n.Ztunnel))
	}
	for _, w := range s.Waypoints {
		fmt.Fprintf(tw, "waypoint %s/%s\t%d\t%s\n", w.Namespace, w.Name, w.Proc.PID, procState(w.Proc))
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "POD\tNODE\tIP\tMESH\tAPPS\n")
	for _, p := range s.Pods {
		mesh := "captured"
		if !p.Captured {
			mesh = "no: " + p.Reason
		}
		apps := p.Apps
		if apps == "" {
			apps = "-"
		} else if !p.AppsUp {
			apps += " (down)"
		}
		if !p.NetNS {
			mesh = "netns missing"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Node, p.IP, mesh, apps)
	}
	return tw.Flush()
}

// procState is a lab process's STATE column.
func procState(p lab.ProcStatus) string {
	switch {
	case p.Ready:
		return "ready"
	case p.Running:
		return "running, not ready: " + p.Detail
	default:
		return p.Detail
	}
}
