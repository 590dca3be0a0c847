package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// WaypointFor are the kinds of waypoint: whose traffic it takes.
var WaypointFor = []string{"serviceaccount", "service", "namespace"}

// WaypointSpec asks for a waypoint in the lab.
type WaypointSpec struct {
	Name, Namespace string
	// For is serviceaccount, service or namespace (the Gateway's ambit.dev/waypoint-for).
	For string
	// Node runs the waypoint's pod; default: the lab's first node.
	Node string
}

// ApplyWaypoint asks for a waypoint in the lab the way a user does in Kubernetes: it writes
// the ambit-waypoint Gateway into the controller's folder, and the controller runs it (its
// --waypoint-exec calls SyncWaypoints, which gives the waypoint a pod of its own with
// identity spiffe://<td>/ns/<namespace>/sa/<name> and records the pod's address in the
// Gateway's status). ApplyWaypoint returns once the waypoint is ready and the Gateway carries
// its address. Applying a waypoint that runs already changes nothing. Binding workloads to it
// is a label (ambit.dev/use-waypoint), set apart.
func ApplyWaypoint(ctx context.Context, o Options, w WaypointSpec) (*WaypointState, error) {
	if err := o.complete(); err != nil {
		return nil, err
	}
	if err := w.check(); err != nil {
		return nil, err
	}
	st, err := LoadState(o.Dir)
	if err != nil {
		return nil, err
	}
	for _, wp := range st.Waypoints {
		if wp.Name == w.Name && wp.Namespace == w.Namespace && wp.For != w.For {
			return nil, fmt.Errorf("waypoint %s/%s runs for %s; delete it first to make it a %s waypoint", w.Namespace, w.Name, wp.For, w.For)
		}
	}
	if _, err := WriteWaypointGateway(st.ConfigDir, w.Namespace, w.Name, w.For, w.Node); err != nil {
		return nil, err
	}
	var wp *WaypointState
	if err := waitFor(ctx, 45*time.Second, "the controller to run waypoint "+w.Namespace+"/"+w.Name, func() error {
		wp, err = runningWaypoint(ctx, o.Dir, w.Namespace, w.Name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("%w (controller log: %s)", err, o.path("logs", "controller.log"))
	}
	o.printf("waypoint %s/%s: ready on %s (node %s), identity spiffe://cluster.local/ns/%s/sa/%s", w.Namespace, w.Name, wp.IP, wp.Node, w.Namespace, w.Name)
	return wp, nil
}

// runningWaypoint returns the waypoint if it runs, is ready, and the controller's Gateway
// file carries its address.
func runningWaypoint(ctx context.Context, dir, namespace, name string) (*WaypointState, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	for _, wp := range st.Waypoints {
		if wp.Name != name || wp.Namespace != namespace {
			continue
		}
		if !alive(wp.Proc.PID) {
			return nil, fmt.Errorf("exited; the end of %s:\n%s", wp.Proc.Log, logTail(wp.Proc.Log, 15))
		}
		if err := httpOK("http://" + wp.ReadyAddr + "/healthz/ready"); err != nil {
			return nil, err
		}
		return &wp, nil
	}
	return nil, errors.New("not started yet")
}

func (w *WaypointSpec) check() error {
	if !contains(WaypointFor, w.For) {
		return fmt.Errorf("waypoint for %q: want one of %v", w.For, WaypointFor)
	}
	if !dnsLabel.MatchString(w.Name) || !dnsLabel.MatchString(w.Namespace) {
		return fmt.Errorf("waypoint %s/%s: name and namespace must be DNS labels", w.Namespace, w.Name)
	}
	return nil
}

// ParseWaypointArg reads one argument of `lab waypoints-sync`: NAMESPACE/NAME=FOR.
func ParseWaypointArg(a string) (WaypointSpec, error) {
	ns, rest, ok1 := strings.Cut(a, "/")
	name, kind, ok2 := strings.Cut(rest, "=")
	w := WaypointSpec{Namespace: ns, Name: name, For: kind}
	if !ok1 || !ok2 {
		return w, fmt.Errorf("waypoint %q: want NAMESPACE/NAME=FOR", a)
	}
	return w, w.check()
}

// SyncWaypoints makes the lab's waypoints exactly want: it starts those that do not run
// (each in a pod of its own on the node its Gateway names with NodeAnnotation, else the lab's
// first), restarts those that died, stops those
// not wanted any more, and records every waypoint's address in its Gateway's status in the
// controller's folder. It is what the controller's --waypoint-exec runs, on every change of
// its Gateways and every resync; a run with nothing to do prints nothing.
func SyncWaypoints(ctx context.Context, o Options, want []WaypointSpec) error {
	if err := o.complete(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(o.BinDir, "waypoint")); err != nil {
		return fmt.Errorf("the lab runs waypoints with %s: %w (run `make build`, or pass --bin-dir)", filepath.Join(o.BinDir, "waypoint"), err)
	}
	unlock, err := lockState(o.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := LoadState(o.Dir)
	if err != nil {
		return err
	}
	nodes := gatewayNodes(st.ConfigDir)
	wanted := map[string]WaypointSpec{}
	for i, w := range want {
		want[i].Node = nodes[w.Namespace+"/"+w.Name]
		if want[i].Node == "" {
			want[i].Node = st.Nodes[0].Name
		}
		wanted[w.Namespace+"/"+w.Name] = want[i]
	}
	var errs []error
	for i := len(st.Waypoints) - 1; i >= 0; i-- {
		wp := st.Waypoints[i]
		w, ok := wanted[wp.Namespace+"/"+wp.Name]
		switch {
		case !ok:
			o.printf("waypoint %s/%s: its Gateway is gone; stopping it", wp.Namespace, wp.Name)
		case w.For != wp.For:
			o.printf("waypoint %s/%s: now for %s, was for %s; replacing it", wp.Namespace, wp.Name, w.For, wp.For)
		case w.Node != wp.Node:
			o.printf("waypoint %s/%s: now on node %s, was on %s; moving it", wp.Namespace, wp.Name, w.Node, wp.Node)
		case !alive(wp.Proc.PID):
			o.printf("waypoint %s/%s exited (see %s); restarting it", wp.Namespace, wp.Name, wp.Proc.Log)
		default:
			continue
		}
		if err := removeWaypoint(ctx, &o, st, i); err != nil {
			errs = append(errs, err)
		}
	}
	if err := st.save(o.Dir); err != nil {
		return err
	}
	for _, w := range want {
		wp := st.waypoint(w.Namespace, w.Name)
		if wp == nil {
			if wp, err = startWaypoint(ctx, &o, st, w); err != nil {
				errs = append(errs, fmt.Errorf("waypoint %s/%s: %w", w.Namespace, w.Name, err))
				continue
			}
		}
		res, err := configdir.SetGatewayAddress(st.ConfigDir, wp.Namespace, wp.Name, netip.MustParseAddr(wp.IP))
		if err != nil {
			errs = append(errs, err)
		} else if res.Changed {
			o.printf("waypoint %s/%s: address %s recorded in %v", wp.Namespace, wp.Name, wp.IP, res.Files)
		}
	}
	return errors.Join(errs...)
}

func (s *State) waypoint(namespace, name string) *WaypointState {
	for i := range s.Waypoints {
		if s.Waypoints[i].Namespace == namespace && s.Waypoints[i].Name == name {
			return &s.Waypoints[i]
		}
	}
	return nil
}

// startWaypoint gives w a pod on its node (default the lab's first), runs the waypoint in it and waits until
// it is ready.
func startWaypoint(ctx context.Context, o *Options, st *State, w WaypointSpec) (*WaypointState, error) {
	if w.Node == "" {
		w.Node = st.Nodes[0].Name
	}
	node := st.node(w.Node)
	if node == nil {
		return nil, fmt.Errorf("lab %q has no node %q", st.Name, w.Node)
	}
	ip, err := freeAddr(st, w.Node)
	if err != nil {
		return nil, err
	}
	n := names{st.Prefix}
	wp := WaypointState{Name: w.Name, Namespace: w.Namespace, For: w.For, Node: w.Node, IP: ip.String(),
		NetNS:     "/var/run/netns/" + n.prefix + "-" + w.Namespace + "-wp-" + w.Name,
		AdminAddr: ip.String() + ":15000", ReadyAddr: ip.String() + ":15021"}
	for i := 500; ; i++ {
		if !linkExists(ctx, n.veth(i)) {
			wp.Link = n.veth(i)
			break
		}
	}
	gw, err := netip.ParsePrefix(st.Gateway)
	if err != nil {
		return nil, fmt.Errorf("lab state: gateway %q: %w", st.Gateway, err)
	}
	if err := makeNetns(ctx, filepath.Base(wp.NetNS), wp.Link, st.Bridge, netip.PrefixFrom(ip, gw.Bits()), gw.Addr()); err != nil {
		return nil, fmt.Errorf("waypoint %s/%s: %w", w.Namespace, w.Name, err)
	}
	st.Waypoints = append(st.Waypoints, wp)
	if err := st.save(o.Dir); err != nil {
		return nil, err
	}
	if err := writeWaypointPod(st, &wp); err != nil {
		return nil, err
	}
	log := o.path("logs", "waypoint-"+w.Namespace+"-"+w.Name+".log")
	proc, err := start(log, "ip", "netns", "exec", filepath.Base(wp.NetNS), filepath.Join(o.BinDir, "waypoint"),
		"--name", w.Name, "--namespace", w.Namespace, "--controller", st.GRPCAddr,
		"--token-file", o.path("tokens", w.Node), "--root-cert", st.RootCert,
		"--admin-addr", wp.AdminAddr, "--metrics-addr", ip.String()+":15020", "--ready-addr", wp.ReadyAddr)
	if err != nil {
		return nil, err
	}
	wp.Proc = proc
	st.Waypoints[len(st.Waypoints)-1] = wp
	if err := st.save(o.Dir); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 20*time.Second, "waypoint "+w.Namespace+"/"+w.Name, func() error {
		if !alive(proc.PID) {
			return fmt.Errorf("exited; the end of %s:\n%s", log, logTail(log, 15))
		}
		return httpOK("http://" + wp.ReadyAddr + "/healthz/ready")
	}); err != nil {
		return nil, err
	}
	o.printf("waypoint %s/%s: ready on %s (node %s), identity spiffe://cluster.local/ns/%s/sa/%s", w.Namespace, w.Name, wp.IP, wp.Node, w.Namespace, w.Name)
	return &wp, nil
}

// DeleteWaypoint removes the Gateway that ApplyWaypoint wrote; the controller then stops the
// waypoint and removes its pod. It returns once the waypoint is gone.
func DeleteWaypoint(ctx context.Context, o Options, namespace, name string) error {
	if err := o.complete(); err != nil {
		return err
	}
	st, err := LoadState(o.Dir)
	if err != nil {
		return err
	}
	path := filepath.Join(st.ConfigDir, WaypointFile(namespace, name))
	if err := os.Remove(path); err != nil {
		if !os.IsNotExist(err) {
			return err
		}
		if st.waypoint(namespace, name) == nil {
			return fmt.Errorf("lab %q runs no waypoint %s/%s", st.Name, namespace, name)
		}
		return fmt.Errorf("waypoint %s/%s: its Gateway is not in %s: remove it from the file of %s that defines it", namespace, name, path, st.ConfigDir)
	}
	if err := waitFor(ctx, 30*time.Second, "the controller to stop waypoint "+namespace+"/"+name, func() error {
		st, err := LoadState(o.Dir)
		if err != nil {
			return err
		}
		if wp := st.waypoint(namespace, name); wp != nil {
			return fmt.Errorf("pid %d still runs", wp.Proc.PID)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("%w (controller log: %s)", err, o.path("logs", "controller.log"))
	}
	o.printf("waypoint %s/%s deleted", namespace, name)
	return nil
}

func removeWaypoint(ctx context.Context, o *Options, st *State, i int) error {
	wp := st.Waypoints[i]
	if err := stop(wp.Proc.PID, 5*time.Second); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(st.ConfigDir, podFile(wp.Namespace, wp.Name)))
	_ = run(ctx, "ip", "netns", "del", filepath.Base(wp.NetNS))
	if linkExists(ctx, wp.Link) {
		_ = run(ctx, "ip", "link", "del", wp.Link)
	}
	st.Waypoints = append(st.Waypoints[:i], st.Waypoints[i+1:]...)
	o.printf("waypoint %s/%s stopped, its pod removed", wp.Namespace, wp.Name)
	return nil
}

// WaypointFile is the file of the controller's folder that holds the Gateway of waypoint
// namespace/name when ambitctl wrote it.
func WaypointFile(namespace, name string) string {
	return "waypoint-" + namespace + "-" + name + ".yaml"
}

// WriteWaypointGateway writes the Gateway of waypoint namespace/name for kind into the folder
// dir as WaypointFile and returns its path. A file that asks for the same waypoint already is
// kept as it is, with the address the controller recorded in its status.
func WriteWaypointGateway(dir, namespace, name, kind, node string) (string, error) {
	path := filepath.Join(dir, WaypointFile(namespace, name))
	if old, err := os.ReadFile(path); err == nil {
		var gw gatewayv1.Gateway
		if yaml.Unmarshal(old, &gw) == nil && gw.Kind == "Gateway" && gw.Name == name && gw.Namespace == namespace &&
			string(gw.Spec.GatewayClassName) == model.WaypointClass && gw.Labels[model.LabelWaypointFor] == kind &&
			gatewayNode(&gw) == node {
			return path, nil
		}
	}
	gw := model.WaypointGateway(namespace, name, kind, "")
	if node != "" {
		gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{
			Annotations: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{NodeAnnotation: gatewayv1.AnnotationValue(node)}}
	}
	b, err := yaml.Marshal(gw)
	if err != nil {
		return "", err
	}
	head := "# Written by `ambitctl waypoint apply`; the controller runs the waypoint and records its address in the status.\n"
	return path, configdir.WriteFileAtomic(path, append([]byte(head), b...), 0o644)
}

// NodeAnnotation, among a Gateway's spec.infrastructure.annotations (what the Gateway API
// passes on to the resources made for a Gateway), names the lab node whose pod runs the
// waypoint; without it the lab's first node does.
const NodeAnnotation = "lab.ambit.dev/node"

func gatewayNode(gw *gatewayv1.Gateway) string {
	if gw.Spec.Infrastructure == nil {
		return ""
	}
	return string(gw.Spec.Infrastructure.Annotations[NodeAnnotation])
}

// gatewayNodes returns the node asked for by each Gateway of the folder dir that asks for
// one, by "<namespace>/<name>". Files that do not parse are skipped: the controller reports
// them.
func gatewayNodes(dir string) map[string]string {
	out := map[string]string{}
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !isConfigFile(d.Name()) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		objs, _ := source.ParseFile(path, b)
		for _, o := range objs {
			if gw, ok := o.(*gatewayv1.Gateway); ok && gatewayNode(gw) != "" {
				out[gw.Namespace+"/"+gw.Name] = gatewayNode(gw)
			}
		}
		return nil
	})
	return out
}

// podFile is the file of the folder that holds the pod running a waypoint.
func podFile(namespace, name string) string {
	return "zz-lab-waypoint-pod-" + namespace + "-" + name + ".yaml"
}

// writeWaypointPod writes the Pod that runs the waypoint into the controller's folder, as a
// kubelet would report it. The pod stays out of the mesh's capture (a waypoint speaks HBONE
// itself).
func writeWaypointPod(st *State, wp *WaypointState) error {
	pod := corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: wp.Name + "-waypoint", Namespace: wp.Namespace,
			Labels: map[string]string{
				"gateway.networking.k8s.io/gateway-name": wp.Name,
				model.LabelDataplaneMode:                 "none",
			}},
		Spec: corev1.PodSpec{NodeName: wp.Node, ServiceAccountName: wp.Name,
			Containers: []corev1.Container{{Name: "waypoint", Image: "lab"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: wp.IP, PodIPs: []corev1.PodIP{{IP: wp.IP}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	b, err := yaml.Marshal(pod)
	if err != nil {
		return err
	}
	out := append([]byte("# Written by the lab (`ambitctl lab waypoints-sync`): the pod that runs waypoint "+wp.Namespace+"/"+wp.Name+".\n"), b...)
	return writeAtomic(filepath.Join(st.ConfigDir, podFile(wp.Namespace, wp.Name)), out)
}

// freeAddr returns the first address of node's /24 that no pod or waypoint holds.
func freeAddr(st *State, node string) (netip.Addr, error) {
	gw, err := netip.ParsePrefix(st.Gateway)
	if err != nil {
		return netip.Addr{}, err
	}
	ni := -1
	for i, n := range st.Nodes {
		if n.Name == node {
			ni = i
		}
	}
	used := map[string]bool{gw.Addr().String(): true}
	for _, p := range st.Pods {
		used[p.IP] = true
	}
	for _, w := range st.Waypoints {
		used[w.IP] = true
	}
	base := gw.Masked().Addr().As4()
	for host := 200; host < 255; host++ { // waypoints from .200, pods count up from .2
		a := netip.AddrFrom4([4]byte{base[0], base[1], base[2] + byte(ni+1), byte(host)})
		if !used[a.String()] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s has no free address for a waypoint", node)
}
