package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Node is one node of the cluster: a network and mount namespace of its own holding
// containerd, the kubelet and kube-proxy.
type Node struct {
	// Name is the Node's name (node0, node1, …); Index its place in Cluster.Nodes.
	Name  string
	Index int
	// IP is the node's InternalIP, on the cluster's bridge.
	IP netip.Addr
	// PodCIDR is the node's pod range, once the controller manager assigned it.
	PodCIDR netip.Prefix
	// Dir is the node's directory under the cluster's StateDir.
	Dir string
	// ContainerdSocket is containerd's gRPC socket (for ctr --address, or a CRI client).
	ContainerdSocket string
	// CNIBinDir and CNIConfDir are the node's CNI plugin and configuration directories, bound
	// onto /opt/cni/bin and /etc/cni/net.d inside the node, where containerd looks (Debian's
	// plugins are linked in; the conflist is 10-ambit.conflist). A chained plugin goes into
	// the bin directory and into the conflist's plugins.
	CNIBinDir, CNIConfDir string
	// KubeletRootDir is the kubelet's --root-dir (bound onto /var/lib/kubelet in the node).
	KubeletRootDir string
	// Pid is the process holding the node's namespaces: /proc/<Pid>/ns/net and ns/mnt. Use
	// Command to run something in the node.
	Pid int

	c          *Cluster
	holder     *proc
	containerd *proc
	kubelet    *proc
	kubeProxy  *proc
}

// Command returns a command that runs argv inside the node: in its network and mount
// namespaces, as a hostNetwork pod would see the machine.
func (n *Node) Command(ctx context.Context, argv ...string) *exec.Cmd {
	args := append([]string{"--target", strconv.Itoa(n.Pid), "--net", "--mount", "--"}, argv...)
	return exec.CommandContext(ctx, n.c.bins.system["nsenter"], args...)
}

// Run runs argv inside the node (Command) and returns its combined output.
func (n *Node) Run(ctx context.Context, argv ...string) (string, error) {
	out, err := n.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("node %s: %s: %w: %s", n.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Ctr runs ctr against the node's containerd in the k8s.io namespace (the CRI's).
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	return output(ctx, append([]string{n.c.bins.system["ctr"], "--address", n.ContainerdSocket, "--namespace", "k8s.io"}, args...)...)
}

// ImportImage imports an image tarball (OCI layout or docker save) into the node's
// containerd, where pods with imagePullPolicy Never find it.
func (n *Node) ImportImage(ctx context.Context, tarball string) error {
	_, err := n.Ctr(ctx, "images", "import", tarball)
	return err
}

func (n *Node) path(elem ...string) string { return filepath.Join(append([]string{n.Dir}, elem...)...) }

// HostPath is the directory on the machine that is bound onto p inside the node, for p one
// of the node's private paths (/var/lib/kubelet, /etc/cni/net.d, /opt/cni/bin, an
// Options.HostPaths entry, …): what a hostPath volume of p holds, seen from the test.
func (n *Node) HostPath(p string) string {
	switch p {
	case "/var/lib/kubelet":
		return n.KubeletRootDir
	case "/opt/cni/bin":
		return n.CNIBinDir
	case "/etc/cni/net.d":
		return n.CNIConfDir
	}
	return n.path("host", strings.TrimPrefix(p, "/"))
}

// start makes the node's namespaces and directories, starts containerd, imports the images and
// starts the kubelet (and kube-proxy). The pod network comes later (network), once the node
// has its pod CIDR.
func (n *Node) start(ctx context.Context, images []string, kubeProxy bool) error {
	c := n.c
	n.Dir = filepath.Join(c.StateDir, n.Name)
	n.ContainerdSocket = n.path("containerd.sock")
	n.CNIBinDir, n.CNIConfDir = n.path("cni", "bin"), n.path("cni", "net.d")
	n.KubeletRootDir = n.path("kubelet")
	for _, d := range []string{"logs", "containerd/root", "containerd/state", "containerd/opt", "runc", "kubelet",
		"cni/bin", "cni/net.d", "cni/ipam"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	cg := c.cgroup + "/" + n.Name
	if err := cgroupCreate(cg); err != nil {
		return err
	}

	// The namespaces' holder: unshare makes them and execs sleep, which keeps them.
	holder, err := startProc("holder", n.path("logs", "holder.log"), c.cgroup,
		c.bins.system["unshare"], "--net", "--mount", "--propagation", "private", "--", "sleep", "infinity")
	if err != nil {
		return err
	}
	n.holder, n.Pid = holder, holder.cmd.Process.Pid
	if err := n.waitHolder(ctx); err != nil {
		return err
	}
	if ino, err := nsInode(n.Pid, "net"); err == nil {
		c.holderIno = append(c.holderIno, ino)
	}
	if err := n.link(ctx); err != nil {
		return err
	}
	if err := n.mounts(ctx); err != nil {
		return err
	}
	plugins, err := os.ReadDir(c.bins.cniDir)
	if err != nil {
		return err
	}
	for _, p := range plugins {
		if err := os.Symlink(filepath.Join(c.bins.cniDir, p.Name()), filepath.Join(n.CNIBinDir, p.Name())); err != nil {
			return err
		}
	}

	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	for _, img := range images {
		if err := n.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	if err := n.startKubelet(ctx); err != nil {
		return err
	}
	if kubeProxy {
		if err := n.startKubeProxy(); err != nil {
			return err
		}
	}
	return nil
}

// waitHolder waits until the holder has its own namespaces (unshare has exec'd sleep).
func (n *Node) waitHolder(ctx context.Context) error {
	mine, err := nsInode(os.Getpid(), "mnt")
	if err != nil {
		return err
	}
	for {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(n.Pid) + "/comm")
		ino, err := nsInode(n.Pid, "mnt")
		if err == nil && ino != mine && strings.TrimSpace(string(comm)) == "sleep" {
			return nil
		}
		if n.holder.exited() {
			return fmt.Errorf("namespace holder exited: %v\n%s", n.holder.err, n.holder.tail(10))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace holder: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// link joins the node to the cluster's bridge: a veth, eth0 inside with the node's IP.
func (n *Node) link(ctx context.Context) error {
	c := n.c
	host := c.Bridge + "n" + strconv.Itoa(n.Index)
	pid := strconv.Itoa(n.Pid)
	if err := run(ctx, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pid); err != nil {
		return err
	}
	if err := run(ctx, "ip", "link", "set", host, "master", c.Bridge, "up"); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", n.IP.String() + "/24", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		// As on a real node, a default route: a process on the node (a CNI plugin calling
		// the API server) reaches a ClusterIP, which kube-proxy translates after routing.
		{"ip", "route", "add", "default", "via", c.HostIP.String()},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		if _, err := n.Run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// mounts binds the node's directories onto the fixed paths inside its mount namespace, and
// makes /run/netns (where containerd mounts the pods' netns files) a shared mount before
// containerd starts, so that a pod's HostToContainer mount of it is allowed.
func (n *Node) mounts(ctx context.Context) error {
	// The host's /run/netns is often a mount of its own (`ip netns add` makes it one), copied
	// into the node private: one mount on another at the same path, the runtime would check
	// the lower one's propagation. The node needs none of the host's network namespaces.
	for range 8 {
		if _, err := n.Run(ctx, "umount", "-l", "/run/netns"); err != nil {
			break
		}
	}
	for _, target := range n.c.mountpoints {
		src := n.HostPath(target)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if _, err := n.Run(ctx, "mount", "--bind", src, target); err != nil {
			return err
		}
	}
	// The pods' netns files: /var/run/netns, where containerd keeps them by default and a
	// node agent or ztunnel DaemonSet mounts them from (HostToContainer), the same path on
	// every node.
	_, err := n.Run(ctx, "mount", "--make-rshared", "/run/netns")
	return err
}

func (n *Node) startContainerd(ctx context.Context) error {
	c := n.c
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # The VM's capability bounding set lacks CAP_SYS_RESOURCE: without this, runc cannot write
  # oom_score_adj and every sandbox fails.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
`, n.path("containerd", "root"), n.path("containerd", "state"), n.ContainerdSocket, n.path("containerd", "opt"),
		c.Images["pause"], "/opt/cni/bin", "/etc/cni/net.d", n.path("runc"))
	cfgPath := n.path("containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	p, err := startProc("containerd", n.path("logs", "containerd.log"), c.cgroup,
		c.bins.system["nsenter"], "--target", strconv.Itoa(n.Pid), "--net", "--mount", "--",
		c.bins.system["containerd"], "--config", cfgPath)
	if err != nil {
		return err
	}
	n.containerd = p
	for {
		vctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.Ctr(vctx, "version")
		cancel()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("containerd exited: %v\n%s", p.err, p.tail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd not answering on %s: %w (%v)\n%s", n.ContainerdSocket, ctx.Err(), err, p.tail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) startKubelet(ctx context.Context) error {
	c := n.c
	cfg, err := c.ConfigFor("system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	kubeconfig, err := c.Cluster.Kubeconfig(cfg)
	if err != nil {
		return err
	}
	// No cluster DNS: pods get an empty resolv.conf instead of the host's, whose name servers
	// they could not reach anyway.
	if err := os.WriteFile(n.path("resolv.conf"), nil, 0o644); err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host is cgroup v1 (hybrid); containerd 1.6 cannot tell the kubelet its cgroup driver.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s/%s
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: %s
failSwapOn: false
# Images are imported, never pulled: never collect them, never evict for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
rotateCertificates: false
`, c.cgroup, n.Name, n.ContainerdSocket, n.IP, c.PKIFile("ca.crt"), n.path("resolv.conf"))
	cfgPath := n.path("kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	p, err := startProc("kubelet", n.path("logs", "kubelet.log"), c.cgroup,
		c.bins.system["nsenter"], "--target", strconv.Itoa(n.Pid), "--net", "--mount", "--",
		c.bins.kube["kubelet"],
		"--config="+cfgPath,
		"--kubeconfig="+kubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--root-dir="+n.KubeletRootDir,
		"--cert-dir="+n.path("kubelet-certs"),
		"--v=1",
	)
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

func (n *Node) startKubeProxy() error {
	c := n.c
	cfg, err := c.ConfigFor("system:kube-proxy")
	if err != nil {
		return err
	}
	kubeconfig, err := c.Cluster.Kubeconfig(cfg)
	if err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# nf_conntrack_max is global: leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, kubeconfig, n.Name, c.PodCIDR)
	cfgPath := n.path("kube-proxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	p, err := startProc("kube-proxy", n.path("logs", "kube-proxy.log"), c.cgroup,
		c.bins.system["nsenter"], "--target", strconv.Itoa(n.Pid), "--net", "--mount", "--",
		c.bins.kube["kube-proxy"], "--config="+cfgPath, "--v=1")
	if err != nil {
		return err
	}
	n.kubeProxy = p
	return nil
}

// network waits for the node's pod CIDR, writes its CNI configuration (bridge cbr0 with
// host-local addresses) and routes the CIDR from the host and the other nodes.
func (n *Node) network(ctx context.Context) error {
	c := n.c
	for {
		node, err := c.nodeObject(ctx, n.Name)
		if err == nil && node.Spec.PodCIDR != "" {
			n.PodCIDR, err = netip.ParsePrefix(node.Spec.PodCIDR)
			if err != nil {
				return err
			}
			break
		}
		if err := n.checkAlive(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no pod CIDR for the node: %w (%v)\n%s", ctx.Err(), err, n.kubelet.tail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "ambit-test",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      "cbr0",
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": n.PodCIDR.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": n.path("cni", "ipam"),
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.CNIConfDir, "10-ambit.conflist"), b, 0o644); err != nil {
		return err
	}
	if err := run(ctx, "ip", "route", "add", n.PodCIDR.String(), "via", n.IP.String(), "dev", c.Bridge); err != nil {
		return err
	}
	for _, other := range c.Nodes {
		if other != n {
			if _, err := other.Run(ctx, "ip", "route", "add", n.PodCIDR.String(), "via", n.IP.String()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (n *Node) checkAlive() error {
	for _, p := range []*proc{n.holder, n.containerd, n.kubelet, n.kubeProxy} {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(30))
		}
	}
	return nil
}

// waitReady waits until the Node is Ready.
func (n *Node) waitReady(ctx context.Context) error {
	var last string
	for {
		node, err := n.c.nodeObject(ctx, n.Name)
		if err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					if cond.Status == corev1.ConditionTrue {
						return nil
					}
					last = cond.Reason + ": " + cond.Message
				}
			}
		} else {
			last = err.Error()
		}
		if err := n.checkAlive(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not Ready: %w (last: %s)\n%s", ctx.Err(), last, n.kubelet.tail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stopProcesses stops kube-proxy, the kubelet and containerd; what they leave (shims,
// containers) the sweep kills.
func (n *Node) stopProcesses() {
	n.kubeProxy.stop(5 * time.Second)
	n.kubelet.stop(10 * time.Second)
	n.containerd.stop(10 * time.Second)
}

// nsInode is the inode of /proc/<pid>/ns/<kind>.
func nsInode(pid int, kind string) (uint64, error) {
	var st syscallStat
	if err := statNS(pid, kind, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
