package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"ambit.dev/controller/internal/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// ApplyWaypoint runs a waypoint in the lab as Kubernetes would run a Deployment for an
// ambit-waypoint Gateway: a pod of its own (namespace, address, identity
// spiffe://<td>/ns/<namespace>/sa/<name>), the waypoint process in it, and the Gateway,
// carrying the pod's address, in the controller's folder. Applying a waypoint that runs
// already changes nothing. Binding workloads to it is a label (ambit.dev/use-waypoint),
// set apart.
func ApplyWaypoint(ctx context.Context, o Options, w WaypointSpec) (*WaypointState, error) {
	if err := o.complete(); err != nil {
		return nil, err
	}
	if !contains(WaypointFor, w.For) {
		return nil, fmt.Errorf("waypoint for %q: want one of %v", w.For, WaypointFor)
	}
	if !dnsLabel.MatchString(w.Name) || !dnsLabel.MatchString(w.Namespace) {
		return nil, fmt.Errorf("waypoint %s/%s: name and namespace must be DNS labels", w.Namespace, w.Name)
	}
	if _, err := os.Stat(filepath.Join(o.BinDir, "waypoint")); err != nil {
		return nil, fmt.Errorf("the lab runs waypoints with %s: %w (run `make build`, or pass --bin-dir)", filepath.Join(o.BinDir, "waypoint"), err)
	}
	st, err := LoadState(o.Dir)
	if err != nil {
		return nil, err
	}
	for i := range st.Waypoints {
		if wp := &st.Waypoints[i]; wp.Name == w.Name && wp.Namespace == w.Namespace {
			if wp.For != w.For {
				return nil, fmt.Errorf("waypoint %s/%s runs for %s; delete it first to make it a %s waypoint", w.Namespace, w.Name, wp.For, w.For)
			}
			if alive(wp.Proc.PID) {
				o.printf("waypoint %s/%s runs already (%s on %s)", w.Namespace, w.Name, wp.IP, wp.Node)
				return wp, nil
			}
			if err := removeWaypoint(ctx, &o, st, i); err != nil {
				return nil, err
			}
			break
		}
	}
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
	if err := writeWaypointObjects(st, &wp); err != nil {
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
			return fmt.Errorf("exited; see %s", log)
		}
		return httpOK("http://" + wp.ReadyAddr + "/healthz/ready")
	}); err != nil {
		return nil, err
	}
	o.printf("waypoint %s/%s: ready on %s (node %s), identity spiffe://cluster.local/ns/%s/sa/%s", w.Namespace, w.Name, wp.IP, wp.Node, w.Namespace, w.Name)
	return &wp, nil
}

// DeleteWaypoint stops a lab waypoint and removes its pod and Gateway.
func DeleteWaypoint(ctx context.Context, o Options, namespace, name string) error {
	if err := o.complete(); err != nil {
		return err
	}
	st, err := LoadState(o.Dir)
	if err != nil {
		return err
	}
	for i, wp := range st.Waypoints {
		if wp.Name == name && wp.Namespace == namespace {
			if err := removeWaypoint(ctx, &o, st, i); err != nil {
				return err
			}
			return st.save(o.Dir)
		}
	}
	return fmt.Errorf("lab %q runs no waypoint %s/%s", st.Name, namespace, name)
}

func removeWaypoint(ctx context.Context, o *Options, st *State, i int) error {
	wp := st.Waypoints[i]
	if err := stop(wp.Proc.PID, 5*time.Second); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(st.ConfigDir, waypointFile(wp.Namespace, wp.Name)))
	_ = run(ctx, "ip", "netns", "del", filepath.Base(wp.NetNS))
	if linkExists(ctx, wp.Link) {
		_ = run(ctx, "ip", "link", "del", wp.Link)
	}
	st.Waypoints = append(st.Waypoints[:i], st.Waypoints[i+1:]...)
	o.printf("waypoint %s/%s deleted", wp.Namespace, wp.Name)
	return nil
}

func waypointFile(namespace, name string) string {
	return "zz-lab-waypoint-" + namespace + "-" + name + ".yaml"
}

// writeWaypointObjects writes the waypoint's Gateway and Pod into the controller's folder.
// The pod stays out of the mesh's capture (a waypoint speaks HBONE itself).
func writeWaypointObjects(st *State, wp *WaypointState) error {
	gw := model.WaypointGateway(wp.Namespace, wp.Name, wp.For, wp.IP)
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
	var out []byte
	out = append(out, "# Written by `ambitctl waypoint apply` in the lab: the Gateway and the pod running it.\n"...)
	for _, obj := range []any{gw, pod} {
		b, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		out = append(out, "---\n"...)
		out = append(out, b...)
	}
	return writeAtomic(filepath.Join(st.ConfigDir, waypointFile(wp.Namespace, wp.Name)), out)
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
