package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
	"ambit.dev/controller/lab"
)

// waypointFlags say where the waypoint's Gateway lives, as for `namespace`: a cluster, a
// config folder or the local lab (which also runs the waypoint process).
type waypointFlags struct {
	namespaceFlags
	ns string
}

// waypointRow is one waypoint in listings.
type waypointRow struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	For       string `json:"for"`
	Address   string `json:"address,omitempty"`
	Node      string `json:"node,omitempty"`
	// Process is the lab's waypoint process (ready, running, stopped); Controller is whether
	// the controller has the waypoint connected and in sync.
	Process    string `json:"process,omitempty"`
	Controller string `json:"controller,omitempty"`
}

func waypointCommand(o Options) *cobra.Command {
	var f waypointFlags
	cmd := &cobra.Command{
		Use:     "waypoint",
		Aliases: []string{"wp"},
		Short:   "Run a waypoint (L7 proxy) for a service account, a service or a namespace",
		Long: `A waypoint is the L7 proxy of the mesh: ztunnels send the traffic of the workloads bound to
it through it, and it applies L7 authorization, HTTP routes (weighted splits, retries,
timeouts) and request telemetry. A waypoint is a Gateway of class ` + model.WaypointClass + `; a
workload is bound to it by the label ` + model.LabelUseWaypoint + `=<waypoint name> on its ServiceAccount,
its Service or its Namespace. Unlike Istio, ambit keeps service-account waypoints, beside
service and namespace ones.

Where the Gateway lives:
  --kubeconfig FILE   a Kubernetes cluster; the controller runs the waypoint there
  --config-dir DIR    the folder of YAML a controller reads in local mode
  --lab               the running local lab, which also runs the waypoint in a pod of its own;
                      the default when neither of the above is given and a lab is up`,
		Example: `  ambitctl waypoint apply --for serviceaccount --name server -n demo --enroll
  ambitctl waypoint list
  ambitctl waypoint status
  ambitctl waypoint delete server -n demo`,
	}
	f.register(cmd)
	cmd.PersistentFlags().StringVarP(&f.ns, "namespace", "n", "default", "namespace of the waypoint")
	requireSubcommand(cmd)
	cmd.AddCommand(waypointApplyCommand(o, &f), waypointListCommand(o, &f, false), waypointListCommand(o, &f, true), waypointDeleteCommand(o, &f))
	return cmd
}

// target resolves where the flags point: a lab, a config folder or a cluster.
func (f *waypointFlags) target() (st *lab.State, dir string, err error) {
	set := 0
	for _, b := range []bool{f.kubeconfig != "", f.configDir != "", f.lab.use} {
		if b {
			set++
		}
	}
	if set > 1 {
		return nil, "", errors.New("--kubeconfig, --config-dir and --lab are mutually exclusive: pick where the Gateway lives")
	}
	if f.configDir != "" {
		return nil, f.configDir, nil
	}
	if f.kubeconfig == "" {
		st, err := f.lab.state(f.context == "")
		if err != nil {
			return nil, "", err
		}
		if st != nil {
			return st, st.ConfigDir, nil
		}
	}
	return nil, "", nil
}

func waypointApplyCommand(o Options, f *waypointFlags) *cobra.Command {
	var kind, name, target, node string
	var enroll bool
	cmd := &cobra.Command{
		Use:   "apply --for serviceaccount|service|namespace",
		Short: "Create a waypoint (a Gateway of class " + model.WaypointClass + ") and, with --enroll, bind workloads to it",
		Long: `Create a waypoint: the Gateway ` + "`--name`" + ` (class ` + model.WaypointClass + `, listener mesh on 15008,
label ` + model.LabelWaypointFor + `=<--for>) in namespace -n. The controller runs it: in Kubernetes a
Deployment and Service, in the lab a pod of its own (the command waits until it is ready); its
identity is spiffe://cluster.local/ns/<namespace>/sa/<name>.

With --enroll, bind to it: for serviceaccount the ServiceAccount --target (default: --name),
for service the Service --target (default: --name), for namespace the namespace itself, by
the label ` + model.LabelUseWaypoint + `=<name>. Applying again changes nothing.`,
		Example: `  # a waypoint for the workloads running as service account "server"
  ambitctl waypoint apply --for serviceaccount --name server -n demo --enroll

  # a waypoint for Service "reviews", named "reviews-wp"
  ambitctl waypoint apply --for service --name reviews-wp --target reviews -n shop --enroll

  # one waypoint for the whole namespace
  ambitctl waypoint apply --for namespace --name waypoint -n shop --enroll`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if !contains(lab.WaypointFor, kind) {
				return fmt.Errorf("--for %q: want serviceaccount, service or namespace", kind)
			}
			if name == "" {
				name = "waypoint"
			}
			if target == "" {
				target = name
			}
			bind := configdir.Object{Kind: "Namespace", Name: f.ns}
			switch kind {
			case "serviceaccount":
				bind = configdir.Object{Kind: "ServiceAccount", Namespace: f.ns, Name: target}
			case "service":
				bind = configdir.Object{Kind: "Service", Namespace: f.ns, Name: target}
			}
			st, dir, err := f.target()
			if err != nil {
				return err
			}
			switch {
			case st != nil:
				// The lab runs the waypoint before anything is bound to it, so that no
				// traffic is sent to a waypoint that is not there yet.
				if _, err := lab.ApplyWaypoint(cmd.Context(), lab.Options{Dir: f.lab.dir, Out: w},
					lab.WaypointSpec{Name: name, Namespace: f.ns, For: kind, Node: node}); err != nil {
					return err
				}
			case dir != "":
				path, err := lab.WriteWaypointGateway(dir, f.ns, name, kind, "")
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "waypoint %s/%s written to %s (a controller in local mode runs it only with --waypoint-exec; else start cmd/waypoint yourself)\n", f.ns, name, path)
			default:
				ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
				defer cancel()
				if err := kubeApplyGateway(ctx, o, f, w, model.WaypointGateway(f.ns, name, kind, "")); err != nil {
					return err
				}
			}
			if !enroll {
				fmt.Fprintf(w, "bind workloads with --enroll, or label them %s=%s\n", model.LabelUseWaypoint, name)
				return nil
			}
			if dir != "" {
				res, err := configdir.SetLabel(dir, bind, model.LabelUseWaypoint, name)
				if err != nil {
					return err
				}
				how := "bound"
				if !res.Changed {
					how = "already bound"
				}
				fmt.Fprintf(w, "%s %s to waypoint %s (%s=%s)\n", bind, how, name, model.LabelUseWaypoint, name)
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			c, where, err := o.NewKube(f.kubeconfig, f.context)
			if err != nil {
				return err
			}
			if err := kubeLabel(ctx, c, where, bind, name); err != nil {
				return err
			}
			fmt.Fprintf(w, "%s bound to waypoint %s (%s=%s) in %s\n", bind, name, model.LabelUseWaypoint, name, where)
			return nil
		},
	}
	cmd.Flags().StringVar(&kind, "for", "serviceaccount", "whose traffic the waypoint takes: serviceaccount, service or namespace")
	cmd.Flags().StringVar(&name, "name", "", "name of the waypoint's Gateway (default \"waypoint\")")
	cmd.Flags().StringVar(&target, "target", "", "with --enroll: the ServiceAccount or Service to bind (default: --name)")
	cmd.Flags().StringVar(&node, "node", "", "lab: the node whose pod runs the waypoint (default: the first), as the Gateway's spec.infrastructure annotation "+lab.NodeAnnotation)
	cmd.Flags().BoolVar(&enroll, "enroll", false, "bind the ServiceAccount, Service or Namespace to the waypoint")
	return cmd
}

func waypointListCommand(o Options, f *waypointFlags, status bool) *cobra.Command {
	var all bool
	use, short := "list", "List the waypoints"
	if status {
		use, short = "status", "Show whether each waypoint runs and holds the controller's latest config"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		Example: `  ambitctl waypoint ` + use + `
  ambitctl waypoint ` + use + ` -A -o yaml`,
	}
	output := outputFlag(cmd)
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "every namespace, not only -n")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*output); err != nil {
			return err
		}
		if !cmd.Flags().Changed("namespace") {
			all = true
		}
		rows, err := listWaypoints(cmd.Context(), o, f, status)
		if err != nil {
			return err
		}
		var keep []waypointRow
		for _, r := range rows {
			if all || r.Namespace == f.ns {
				keep = append(keep, r)
			}
		}
		if *output != outShort {
			if keep == nil {
				keep = []waypointRow{}
			}
			return printData(cmd.OutOrStdout(), *output, keep)
		}
		if len(keep) == 0 {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "No waypoints.")
			return err
		}
		headers := []string{"NAMESPACE", "NAME", "FOR", "ADDRESS", "NODE"}
		if status {
			headers = append(headers, "PROCESS", "CONTROLLER")
		}
		t := newTable(cmd.OutOrStdout(), headers...)
		for _, r := range keep {
			cells := []string{r.Namespace, r.Name, r.For, r.Address, r.Node}
			if status {
				cells = append(cells, r.Process, r.Controller)
			}
			t.row(cells...)
		}
		return t.flush()
	}
	return cmd
}

func listWaypoints(ctx context.Context, o Options, f *waypointFlags, status bool) ([]waypointRow, error) {
	st, dir, err := f.target()
	if err != nil {
		return nil, err
	}
	var rows []waypointRow
	switch {
	case st != nil:
		var s *lab.Status
		if status {
			if s, err = lab.GetStatus(ctx, f.lab.dir); err != nil {
				return nil, err
			}
		}
		for i, w := range st.Waypoints {
			r := waypointRow{Namespace: w.Namespace, Name: w.Name, For: w.For, Address: w.IP, Node: w.Node}
			if s != nil && i < len(s.Waypoints) {
				r.Process = procWord(s.Waypoints[i].Proc)
			}
			rows = append(rows, r)
		}
		if status {
			proxies, err := fetchProxies(ctx, o, st.DebugAddr, "is the lab up? see `"+o.Invoked+" lab status`")
			if err != nil {
				return nil, err
			}
			for i := range rows {
				rows[i].Controller = "not connected"
				for _, p := range proxies {
					if p.Kind == "waypoint" && p.Namespace == rows[i].Namespace && p.Name == rows[i].Name {
						rows[i].Controller = proxyState(p)
					}
				}
			}
		}
	case dir != "":
		gws, err := folderGateways(dir)
		if err != nil {
			return nil, err
		}
		for _, gw := range gws {
			rows = append(rows, gatewayRow(gw))
		}
	default:
		gc, err := o.NewGateway(f.kubeconfig, f.context)
		if err != nil {
			return nil, err
		}
		list, err := gc.GatewayV1().Gateways(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list Gateways: %w", err)
		}
		for i := range list.Items {
			if string(list.Items[i].Spec.GatewayClassName) == model.WaypointClass {
				rows = append(rows, gatewayRow(&list.Items[i]))
			}
		}
		if status && len(rows) > 0 {
			if err := clusterWaypointStatus(ctx, o, f, rows); err != nil {
				return nil, err
			}
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Namespace != rows[j].Namespace {
			return rows[i].Namespace < rows[j].Namespace
		}
		return rows[i].Name < rows[j].Name
	})
	return rows, nil
}

func procWord(p lab.ProcStatus) string {
	switch {
	case p.Ready:
		return "ready"
	case p.Running:
		return "running, not ready"
	}
	return "stopped"
}

func gatewayRow(gw *gatewayv1.Gateway) waypointRow {
	r := waypointRow{Namespace: gw.Namespace, Name: gw.Name, For: gw.Labels[model.LabelWaypointFor]}
	if r.For == "" {
		r.For = "serviceaccount"
	}
	for _, a := range append(append([]gatewayv1.GatewayStatusAddress{}, gw.Status.Addresses...), specAddrs(gw)...) {
		r.Address = a.Value
		break
	}
	return r
}

func specAddrs(gw *gatewayv1.Gateway) []gatewayv1.GatewayStatusAddress {
	var out []gatewayv1.GatewayStatusAddress
	for _, a := range gw.Spec.Addresses {
		out = append(out, gatewayv1.GatewayStatusAddress(a))
	}
	return out
}

func waypointDeleteCommand(o Options, f *waypointFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a waypoint; workloads still bound to it fail closed until unbound",
		Example: `  ambitctl waypoint delete server -n demo`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			name := args[0]
			st, dir, err := f.target()
			if err != nil {
				return err
			}
			switch {
			case st != nil:
				if err := lab.DeleteWaypoint(cmd.Context(), lab.Options{Dir: f.lab.dir, Out: w}, f.ns, name); err != nil {
					return err
				}
			case dir != "":
				path := filepath.Join(dir, lab.WaypointFile(f.ns, name))
				if err := os.Remove(path); err != nil {
					return fmt.Errorf("waypoint %s/%s: %w", f.ns, name, err)
				}
				fmt.Fprintf(w, "waypoint %s/%s deleted (%s)\n", f.ns, name, path)
			default:
				ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
				defer cancel()
				gc, err := o.NewGateway(f.kubeconfig, f.context)
				if err != nil {
					return err
				}
				if err := gc.GatewayV1().Gateways(f.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
					return fmt.Errorf("delete Gateway %s/%s: %w", f.ns, name, err)
				}
				fmt.Fprintf(w, "waypoint %s/%s deleted\n", f.ns, name)
			}
			fmt.Fprintf(w, "workloads labelled %s=%s are refused until the label is removed or the waypoint is back\n", model.LabelUseWaypoint, name)
			return nil
		},
	}
}

// folderGateways reads the ambit-waypoint Gateways of a config folder.
func folderGateways(dir string) ([]*gatewayv1.Gateway, error) {
	var out []*gatewayv1.Gateway
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || (filepath.Ext(path) != ".yaml" && filepath.Ext(path) != ".yml") || d.Name()[0] == '.' {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		objs, err := source.ParseFile(path, b)
		if err != nil {
			return err
		}
		for _, obj := range objs {
			if gw, ok := obj.(*gatewayv1.Gateway); ok && string(gw.Spec.GatewayClassName) == model.WaypointClass {
				out = append(out, gw)
			}
		}
		return nil
	})
	return out, err
}

func kubeApplyGateway(ctx context.Context, o Options, f *waypointFlags, w io.Writer, gw *gatewayv1.Gateway) error {
	gc, err := o.NewGateway(f.kubeconfig, f.context)
	if err != nil {
		return err
	}
	cur, err := gc.GatewayV1().Gateways(gw.Namespace).Get(ctx, gw.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := gc.GatewayV1().Gateways(gw.Namespace).Create(ctx, gw, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
		}
		fmt.Fprintf(w, "waypoint %s/%s created (Gateway, class %s)\n", gw.Namespace, gw.Name, model.WaypointClass)
		return nil
	case err != nil:
		return fmt.Errorf("get Gateway %s/%s: %s", gw.Namespace, gw.Name, cause(err))
	}
	if string(cur.Spec.GatewayClassName) != model.WaypointClass {
		return fmt.Errorf("gateway %s/%s exists with class %q; it is not a waypoint", gw.Namespace, gw.Name, cur.Spec.GatewayClassName)
	}
	if cur.Labels[model.LabelWaypointFor] == gw.Labels[model.LabelWaypointFor] {
		fmt.Fprintf(w, "waypoint %s/%s exists; nothing changed\n", gw.Namespace, gw.Name)
		return nil
	}
	patch := fmt.Sprintf(`{"metadata":{"resourceVersion":%q,"labels":{%q:%q}}}`, cur.ResourceVersion, model.LabelWaypointFor, gw.Labels[model.LabelWaypointFor])
	if _, err := gc.GatewayV1().Gateways(gw.Namespace).Patch(ctx, gw.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("update Gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	fmt.Fprintf(w, "waypoint %s/%s now for %s\n", gw.Namespace, gw.Name, gw.Labels[model.LabelWaypointFor])
	return nil
}

// kubeLabel binds obj to the waypoint name with the use-waypoint label (a merge patch).
func kubeLabel(ctx context.Context, c kubernetes.Interface, where string, obj configdir.Object, name string) error {
	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, model.LabelUseWaypoint, strconv.Quote(name)))
	var err error
	switch obj.Kind {
	case "Namespace":
		_, err = c.CoreV1().Namespaces().Patch(ctx, obj.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	case "ServiceAccount":
		_, err = c.CoreV1().ServiceAccounts(obj.Namespace).Patch(ctx, obj.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	case "Service":
		_, err = c.CoreV1().Services(obj.Namespace).Patch(ctx, obj.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s does not exist in %s", obj, where)
	}
	if err != nil {
		return fmt.Errorf("bind %s in %s: %w", obj, where, err)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// clusterWaypointStatus fills PROCESS from each waypoint's Deployment (the controller names it
// after the Gateway) and CONTROLLER from the controllers' proxies, asked through the API server.
func clusterWaypointStatus(ctx context.Context, o Options, f *waypointFlags, rows []waypointRow) error {
	kf := kubeFlags{kubeconfig: f.kubeconfig, context: f.context}
	c, err := kf.connect()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	proxies, err := clusterProxies(ctx, o, c)
	if err != nil {
		return err
	}
	for i := range rows {
		r := &rows[i]
		d, err := c.kube.AppsV1().Deployments(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		switch {
		case err != nil:
			r.Process = "no Deployment"
		case d.Status.ReadyReplicas > 0:
			r.Process = fmt.Sprintf("ready %d/%d", d.Status.ReadyReplicas, d.Status.Replicas)
		default:
			r.Process = fmt.Sprintf("not ready 0/%d", d.Status.Replicas)
		}
		var connected, synced int
		for _, p := range proxies {
			if p.Kind == "waypoint" && p.Namespace == r.Namespace && p.Name == r.Name {
				connected++
				if proxyState(p) == statusSynced {
					synced++
				}
			}
		}
		switch {
		case connected == 0:
			r.Controller = "not connected"
		case synced == connected:
			r.Controller = fmt.Sprintf("%s %d/%d", statusSynced, synced, connected)
		default:
			r.Controller = fmt.Sprintf("%d/%d %s", synced, connected, statusSynced)
		}
	}
	return nil
}
