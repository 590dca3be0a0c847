package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/controller/internal/model"
	"ambit.dev/proto/nodeapi"
)

// Up brings the lab of t up: the bridge and one network namespace per pod, the controller
// in folder mode, one ztunnel per node with the node's pods handed over, and the sample
// applications. Run again on a lab that is up, it checks every process and fixes what is
// missing; a lab from another topology, or one left by a crash, is taken down first.
func Up(ctx context.Context, t *Topology, o Options) (*State, error) {
	if err := o.complete(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root: it creates network namespaces, links and iptables rules")
	}
	for _, bin := range []string{filepath.Join(o.BinDir, "controller"), filepath.Join(o.BinDir, "ztunnel"), o.Ambitctl} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("lab needs %s: %w (run `make build`, or pass --bin-dir)", bin, err)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockState(o.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if old, err := LoadState(o.Dir); err == nil {
		if old.Name == t.Name && old.Prefix == o.Prefix && healthy(old) {
			o.printf("lab %s is already up", t.Name)
			return old, nil
		}
		o.printf("taking down the lab left in %s first", o.Dir)
		if err := down(ctx, Options{Dir: o.Dir, Prefix: old.Prefix, Out: o.Out, Ambitctl: o.Ambitctl, BinDir: o.BinDir}); err != nil {
			return nil, err
		}
	} else if err := down(ctx, Options{Dir: o.Dir, Prefix: o.Prefix, Out: io.Discard, Ambitctl: o.Ambitctl, BinDir: o.BinDir}); err != nil {
		return nil, err
	}
	n := names{o.Prefix}
	st := &State{Name: t.Name, Prefix: o.Prefix, ConfigDir: o.path("config"), DebugAddr: o.debugAddr(),
		GRPCAddr: o.grpcAddr(t), Bridge: n.bridge(), Gateway: t.Gateway().String()}
	for _, d := range []string{o.Dir, o.path("logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// The record exists from the start, so that a crash part way leaves enough for down.
	if err := st.save(o.Dir); err != nil {
		return nil, err
	}
	fail := func(err error) (*State, error) {
		_ = st.save(o.Dir)
		return nil, fmt.Errorf("%w (what was made is recorded in %s; `%s lab down` removes it)", err, o.Dir, o.Invoked)
	}

	o.printf("network: bridge %s %s, %d pods", n.bridge(), t.Gateway(), len(t.Pods))
	if err := makeBridge(ctx, t, n); err != nil {
		return fail(err)
	}
	for i, p := range t.Pods {
		if err := makePod(ctx, t, n, i); err != nil {
			return fail(err)
		}
		st.Pods = append(st.Pods, PodState{Name: p.Name, Namespace: p.Namespace, Node: p.Node,
			UID: model.WorkloadUID(model.DefaultCluster, p.Namespace, p.Name), NetNS: n.netnsPath(p), IP: p.IP, ServiceAccount: p.ServiceAccount})
	}
	if err := writeConfig(t, st.ConfigDir); err != nil {
		return fail(err)
	}
	if err := writeTokens(t, o.path("tokens")); err != nil {
		return fail(err)
	}

	if err := startController(ctx, &o, st); err != nil {
		return fail(err)
	}
	for i, node := range t.Nodes {
		ns := NodeState{Name: node.Name, AdminAddr: o.nodeAddr(i, 0), MetricsAddr: o.nodeAddr(i, 20),
			ReadyAddr: o.nodeAddr(i, 21), NodeAPI: o.path("nodes", node.Name, "ztunnel.sock"),
			StateDir: o.path("nodes", node.Name)}
		if err := StartZtunnel(ctx, o, st, &ns); err != nil {
			st.Nodes = append(st.Nodes, ns)
			return fail(err)
		}
		st.Nodes = append(st.Nodes, ns)
		o.printf("ztunnel %s: ready on %s (admin %s)", node.Name, ns.ReadyAddr, ns.AdminAddr)
	}
	for i, p := range t.Pods {
		ps := &st.Pods[i]
		node := st.node(p.Node)
		if err := nodeapi.NewClient(node.NodeAPI).Add(ctx, nodeapi.Registration{
			UID: ps.UID, Namespace: p.Namespace, Name: p.Name, NetNS: ps.NetNS}); err != nil {
			return fail(fmt.Errorf("hand pod %s/%s to ztunnel %s: %w", p.Namespace, p.Name, p.Node, err))
		}
		for _, a := range p.Apps {
			proc, err := startApp(&o, ps, node, a)
			if err != nil {
				return fail(err)
			}
			ps.Apps = append(ps.Apps, AppState{Kind: a.Kind, Port: a.Port, Proc: proc})
		}
	}
	for _, ps := range st.Pods {
		for _, a := range ps.Apps {
			addr := fmt.Sprintf("%s:%d", ps.IP, a.Port)
			if err := waitFor(ctx, 10*time.Second, "app "+a.Kind+" in pod "+ps.Namespace+"/"+ps.Name, func() error {
				if !alive(a.Proc.PID) {
					return fmt.Errorf("exited; the end of %s:\n%s", a.Proc.Log, logTail(a.Proc.Log, 15))
				}
				return dialIn(ps.NetNS, addr)
			}); err != nil {
				return fail(err)
			}
		}
		if len(ps.Apps) > 0 {
			o.printf("pod %s/%s: %s on %s, %s", ps.Namespace, ps.Name, ps.IP, ps.Node, appList(ps.Apps))
		} else {
			o.printf("pod %s/%s: %s on %s", ps.Namespace, ps.Name, ps.IP, ps.Node)
		}
	}
	if err := st.save(o.Dir); err != nil {
		return nil, err
	}
	o.printf("lab %s is up: `%s lab status`, `%s lab down`", t.Name, o.Invoked, o.Invoked)
	return st, nil
}

func appList(apps []AppState) string {
	s := ""
	for i, a := range apps {
		if i > 0 {
			s += ", "
		}
		s += a.Kind + " :" + strconv.Itoa(a.Port)
	}
	return s
}

func startController(ctx context.Context, o *Options, st *State) error {
	log := o.path("logs", "controller.log")
	args := []string{"--config-dir", st.ConfigDir, "--ca-dir", o.path("ca"), "--token-dir", o.path("tokens"),
		"--grpc-addr", st.GRPCAddr, "--metrics-addr", st.DebugAddr,
		// The controller runs the waypoints of the folder's Gateways through the lab.
		"--waypoint-exec", o.Ambitctl + " lab waypoints-sync --lab-dir " + o.Dir + " --bin-dir " + o.BinDir}
	proc, err := start(log, filepath.Join(o.BinDir, "controller"), append(args, o.ControllerArgs...)...)
	if err != nil {
		return err
	}
	st.Controller = proc
	// The controller writes the roots it trusts there at every start: proxies started after a
	// root rotation trust the controller's new certificate (docs/operations.md).
	st.RootCert = o.path("ca", "trust-bundle.pem")
	if err := waitFor(ctx, 20*time.Second, "controller", func() error {
		if !alive(proc.PID) {
			return fmt.Errorf("exited; the end of %s:\n%s", log, logTail(log, 15))
		}
		if _, err := os.Stat(st.RootCert); err != nil {
			return err
		}
		return httpOK("http://" + st.DebugAddr + "/readyz")
	}); err != nil {
		return err
	}
	o.printf("controller: ready, gRPC %s, debug %s (folder %s)", st.GRPCAddr, st.DebugAddr, st.ConfigDir)
	return nil
}

// StartZtunnel starts the ztunnel of node ns and waits until it is ready. It does not stop
// a ztunnel that runs already: a second one beside it takes over its pods, which is how a
// ztunnel is replaced without dropping connections.
func StartZtunnel(ctx context.Context, o Options, st *State, ns *NodeState) error {
	if err := o.complete(); err != nil {
		return err
	}
	prev := ns.Ztunnel.PID // the predecessor, when it runs
	log := o.path("logs", "ztunnel-"+ns.Name+".log")
	bin, err := nodeBinary(o, ns.Name)
	if err != nil {
		return err
	}
	proc, err := start(log, bin,
		"--node", ns.Name, "--controller", st.GRPCAddr, "--token-file", o.path("tokens", ns.Name),
		"--root-cert", st.RootCert, "--state-dir", ns.StateDir, "--node-api", ns.NodeAPI,
		"--admin-addr", ns.AdminAddr, "--metrics-addr", ns.MetricsAddr, "--ready-addr", ns.ReadyAddr)
	if err != nil {
		return err
	}
	ns.Ztunnel = proc
	return waitFor(ctx, 20*time.Second, "ztunnel "+ns.Name, func() error {
		if !alive(proc.PID) {
			return fmt.Errorf("exited; the end of %s:\n%s", log, logTail(log, 15))
		}
		// Until the hand-over both answer on the shared readiness port, the predecessor
		// with 200. The new one takes the node API's socket once it holds the pods.
		if prev > 0 && prev != proc.PID && alive(prev) {
			if pid, err := socketOwner(ns.NodeAPI); err != nil || pid != proc.PID {
				return fmt.Errorf("pid %d has not taken over from pid %d yet (node api owner %d, %v)", proc.PID, prev, pid, err)
			}
		}
		return httpOK("http://" + ns.ReadyAddr + "/healthz/ready")
	})
}

// socketOwner is the pid of the process that listens on the unix socket at path.
func socketOwner(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

func startApp(o *Options, ps *PodState, node *NodeState, a App) (ProcState, error) {
	log := o.path("logs", fmt.Sprintf("app-%s-%s-%s.log", ps.Namespace, ps.Name, a.Kind))
	return start(log, "ip", "netns", "exec", filepath.Base(ps.NetNS), o.Ambitctl, "lab", "serve",
		"--kind", a.Kind, "--port", strconv.Itoa(a.Port), "--pod", ps.Namespace+"/"+ps.Name,
		"--node-api", node.NodeAPI, "--lab-dir="+o.Dir)
}

var probe = &http.Client{Timeout: 2 * time.Second}

func httpOK(url string) error {
	resp, err := probe.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// healthy says whether every process of a recorded lab still runs.
func healthy(s *State) bool { return unhealthy(s) == "" }

// unhealthy says what of the lab in s is gone (with the last lines of a dead process's log),
// or "" when every process runs and every pod's namespace exists.
func unhealthy(s *State) string {
	if len(s.Nodes) == 0 {
		return "the lab has no nodes"
	}
	dead := func(what string, p ProcState) string {
		return fmt.Sprintf("%s (pid %d) is not running; the end of %s:\n%s", what, p.PID, p.Log, logTail(p.Log, 15))
	}
	if !alive(s.Controller.PID) {
		return dead("the controller", s.Controller)
	}
	for _, n := range s.Nodes {
		if !alive(n.Ztunnel.PID) {
			return dead("ztunnel "+n.Name, n.Ztunnel)
		}
	}
	for _, w := range s.Waypoints {
		if !alive(w.Proc.PID) {
			return dead("waypoint "+w.Namespace+"/"+w.Name, w.Proc)
		}
	}
	for _, p := range s.Pods {
		if _, err := os.Stat(p.NetNS); err != nil {
			return fmt.Sprintf("pod %s/%s: %v", p.Namespace, p.Name, err)
		}
		for _, a := range p.Apps {
			if !alive(a.Proc.PID) {
				return dead(fmt.Sprintf("app %s :%d of pod %s/%s", a.Kind, a.Port, p.Namespace, p.Name), a.Proc)
			}
		}
	}
	return ""
}

// logTail is the last n lines of the log at path, or why it cannot be read.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (s *State) save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "state.json"), append(b, '\n'))
}

func (s *State) node(name string) *NodeState {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// nodeBinary copies the ztunnel binary to the node's own file and returns its path: each
// node of the lab runs its own copy, as each node of a cluster has its own image. Processes
// running one file share its pages, which the kernel does not page out for one of them
// (ztunnel gives back the pages only its start-up used, package pageout), and which fault
// around into each other's resident set. The copy is renamed into place, so a ztunnel
// running the previous copy keeps it.
func nodeBinary(o Options, node string) (string, error) {
	b, err := os.ReadFile(filepath.Join(o.BinDir, "ztunnel"))
	if err != nil {
		return "", err
	}
	dst := o.path("bin", "ztunnel-"+node)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	if err := configdir.WriteFileAtomic(dst, b, 0o755); err != nil {
		return "", fmt.Errorf("copy ztunnel for node %s: %w", node, err)
	}
	return dst, nil
}
