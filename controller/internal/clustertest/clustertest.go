// Package clustertest runs a real Kubernetes cluster on this machine for end-to-end tests:
// etcd and kube-apiserver (through kubetest), kube-controller-manager, kube-scheduler, and one
// or more nodes, each with its own containerd (Debian's 1.6, runc, cgroupfs), a kubelet, the
// CNI bridge plugin and kube-proxy (nftables). Pods run from the images of `make images`,
// imported into every node's containerd (pods say imagePullPolicy: Never). It needs root.
//
//	func TestSomething(t *testing.T) {
//		c := clustertest.Start(t, clustertest.Options{Nodes: 2})
//		pod := ... Image: c.Image("testapp"), ImagePullPolicy: corev1.PullNever ...
//		c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
//		p, _ := c.WaitPodRunning(ctx, "default", pod.Name)
//		http.Get("http://" + p.Status.PodIP + ":8080/")   // pods are routed from the host
//		out, _ := c.Kubectl(ctx, "logs", "-n", "default", pod.Name)
//	}
//
// # Isolation
//
// A cluster takes a free slot s (0..MaxSlots-1) under BaseDir, so that several can run at
// once, from several test binaries: a bridge ambitk<s> on the host holding 10.250.<s>.1/24,
// where the control plane listens (API server on :6443); node i is a network and mount
// namespace of its own at 10.250.<s>.(10+i), joined to that bridge by a veth; the cluster's
// pod CIDR is 10.251.<8s>.0/21, one /24 per node (assigned by the controller manager), routed
// from the host through the node. Everything a node does to the network — its bridge cbr0,
// the kubelet's iptables chains, kube-proxy's nftables, ip_forward — stays in its namespace and
// goes with it. Its mounts (the kubelet's volumes, containerd's rootfs and netns mounts) stay
// in its private mount namespace, where its own directories are bound onto the fixed paths
// the kubelet, containerd and the CNI plugins use whatever their flags say (/var/lib/kubelet,
// /var/lib/cni, /run/containerd, /var/log/pods, /var/log/containers), and onto the standard
// CNI directories /opt/cni/bin and /etc/cni/net.d, which containerd uses: a DaemonSet that
// installs a CNI plugin through hostPath volumes works unchanged. Every process of the
// cluster, down to the shims and the containers, lives under the cgroup /ambit-cluster-s<s>
// (the kubelet's cgroupRoot is /ambit-cluster-s<s>/<node>).
//
// What remains global the harness records before the first cluster starts and puts back when
// the last one ends (BaseDir/host.json): the sysctls the kubelet sets (kernel.panic,
// kernel.panic_on_oops, vm.overcommit_memory, …) and the empty mountpoint directories.
//
// # Teardown
//
// Stop (also run by t.Cleanup) stops kube-proxy, the kubelets and containerd, kills what is
// left in the cluster's cgroups (shims, containers, the namespace holders), stops the control
// plane, removes the cgroups, the host bridge (and with it the routes) and the state
// directory. A test binary that dies leaves its slot's lock free: the next Start on the
// machine sweeps every such slot (kills its processes, unmounts, removes its links, cgroups
// and directory) before it starts. Leftovers lists what Stop should have removed and did not.
//
// Binaries: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl and
// kube-proxy from <repo>/.cache/bin (`make kube-node`); images from <repo>/.cache/images
// (`make images`); containerd, runc, ctr, etcd and the CNI plugins from Debian (`make setup`).
// Start skips the test when not root; when something is missing it skips, naming the make
// target, except under CI (CI=true), where it fails.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/controller/internal/kubetest"
	"ambit.dev/mesh/e2elock"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// MaxSlots is how many clusters can run on the machine at once.
	MaxSlots = 32
	// MaxNodes is how many nodes a cluster can have.
	MaxNodes = 8
	// APIServerPort is the API server's port on the cluster's host address.
	APIServerPort = 6443
	// ServiceCIDR is every cluster's ClusterIP range (it exists only inside the nodes).
	ServiceCIDR = "10.96.0.0/16"
	// StartTimeout bounds Start.
	StartTimeout = 3 * time.Minute
)

// BaseDir holds the slots' locks and state directories and the host state:
// $AMBIT_CLUSTER_DIR, default /tmp/ambit-cluster. Keep it short: containerd's socket lives
// under it.
func BaseDir() string {
	if d := os.Getenv("AMBIT_CLUSTER_DIR"); d != "" {
		return d
	}
	return "/tmp/ambit-cluster"
}

// Options say what cluster to start; the zero value is one node with kube-proxy and every
// image of `make images`.
type Options struct {
	// Nodes is the number of nodes (kubelets), 1 to MaxNodes; default 1.
	Nodes int
	// NoKubeProxy leaves kube-proxy out: no ClusterIP routing in the nodes.
	NoKubeProxy bool
	// Images are the parts whose images every node imports (names in .cache/images/images.txt:
	// controller, ztunnel, waypoint, testapp, pause); default all. pause is always imported:
	// it is the pod sandbox.
	Images []string
	// HostPaths are more paths that each node gets a private, empty directory of its own
	// bound onto, inside its mount namespace: for a DaemonSet's hostPath volumes (a node
	// agent's socket directory, say), which would otherwise land on the machine's own
	// filesystem and be shared by every node. /var/lib/kubelet, /var/lib/cni, /run/containerd,
	// /var/log/pods, /var/log/containers, /opt/cni/bin and /etc/cni/net.d always are.
	HostPaths []string
}

// Cluster is a running cluster. The embedded kubetest.Cluster gives the admin clients
// (Client, Dynamic, Config), Apply, ClientAs, ConfigFor and the rest.
type Cluster struct {
	*kubetest.Cluster

	releaseE2E func() // the shared e2elock, held from Start to Stop

	// Name is "ambit-s<Slot>"; Slot is the cluster's slot on the machine.
	Name string
	Slot int
	// StateDir holds everything of the cluster: control/ (certificates, etcd, logs),
	// <node>/ (containerd, kubelet, CNI, logs), kubeconfig.
	StateDir string
	// HostIP is the host's address on the cluster's bridge, where the control plane listens;
	// Bridge is that bridge's name.
	HostIP netip.Addr
	Bridge string
	// PodCIDR is the cluster's pod range; each node has a /24 of it.
	PodCIDR netip.Prefix
	// Nodes are the cluster's nodes, in order (node0, node1, …).
	Nodes []*Node
	// Version is the images' tag; Images maps a part to its image (ambit.dev/<part>:<Version>).
	Version string
	Images  map[string]string
	// Kubeconfig is an admin kubeconfig file (for kubectl and commands under test).
	Kubeconfig string
	// Timings of the start: control plane up, nodes Ready, all of Start.
	ControlPlaneUp, NodesReady, StartedIn time.Duration

	t           testing.TB
	bins        binaries
	cgroup      string // ambit-cluster-s<slot>
	lock        *os.File
	procs       []*proc // controller manager, scheduler
	before      hostSnapshot
	recorded    bool     // this cluster recorded the host's values (no other was live)
	mountpoints []string // nodeMountpoints and Options.HostPaths
	stopOnce    sync.Once
	stopErr     error
	holderIno   []uint64 // the nodes' network namespaces, to check they are gone
}

// Start starts a cluster and waits until every node is Ready. It skips the test when not root
// (and, outside CI, when a binary or the images are missing); it fails the test when the
// cluster does not come up. t.Cleanup stops it.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("clustertest: needs root (network and mount namespaces, cgroups, containerd)")
	}
	if o.Nodes == 0 {
		o.Nodes = 1
	}
	if o.Nodes < 1 || o.Nodes > MaxNodes {
		t.Fatalf("clustertest: %d nodes: want 1 to %d", o.Nodes, MaxNodes)
	}
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	bins, err := findBinaries(root)
	if err == nil {
		_, _, err = readImages(root)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("clustertest: %v", err)
		}
		t.Skipf("clustertest: %v", err)
	}
	// Not beside the local lab's end-to-end tests (e2elock): other clusters may run.
	releaseE2E, err := e2elock.Shared()
	if err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	c := &Cluster{t: t, bins: bins, releaseE2E: releaseE2E}
	// Torn down at the end of the test, also when it fails; a test may Stop it earlier.
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("clustertest: teardown: %v", err)
		}
	})
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	if err := c.start(ctx, root, o); err != nil {
		c.Stop()
		t.Fatalf("clustertest: %v", err)
	}
	c.StartedIn = time.Since(begin)
	t.Logf("clustertest: cluster %s with %d node(s) up in %v (control plane %v, nodes Ready %v); API server %s",
		c.Name, len(c.Nodes), c.StartedIn.Round(10*time.Millisecond), c.ControlPlaneUp.Round(10*time.Millisecond),
		c.NodesReady.Round(10*time.Millisecond), c.Config.Host)
	return c
}

type binaries struct {
	kube   map[string]string // kube-controller-manager, … → path
	system map[string]string // containerd, ctr, … → path
	cniDir string
}

// findBinaries finds every binary the cluster runs, or says how to get the first missing.
func findBinaries(root string) (binaries, error) {
	b := binaries{kube: map[string]string{}, system: map[string]string{}, cniDir: "/usr/lib/cni"}
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "kube-proxy"} {
		p := filepath.Join(root, ".cache", "bin", name)
		if name == "kube-apiserver" && os.Getenv("AMBIT_KUBE_APISERVER") != "" {
			p = os.Getenv("AMBIT_KUBE_APISERVER")
		}
		if !isExecutable(p) {
			return b, fmt.Errorf("%s not found at %s: run `make kube-node` (it builds the Kubernetes commands into .cache/bin once)", name, p)
		}
		b.kube[name] = p
	}
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "etcd", "unshare", "nsenter", "ip", "mount", "iptables-save", "nft"} {
		p, err := exec.LookPath(name)
		if err != nil {
			for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
				if isExecutable(filepath.Join(d, name)) {
					p, err = filepath.Join(d, name), nil
					break
				}
			}
		}
		if err != nil {
			return b, fmt.Errorf("%s not found: run `make setup` (it installs Debian's containerd, runc, etcd-server, containernetworking-plugins, iproute2, util-linux)", name)
		}
		b.system[name] = p
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if !isExecutable(filepath.Join(b.cniDir, plugin)) {
			return b, fmt.Errorf("CNI plugin %s not found in %s: run `make setup` (containernetworking-plugins)", plugin, b.cniDir)
		}
	}
	return b, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Image is the image of part (e.g. "testapp" → "ambit.dev/testapp:<version>"); it fails the
// test for a part `make images` does not build.
func (c *Cluster) Image(part string) string {
	c.t.Helper()
	ref, ok := c.Images[part]
	if !ok {
		c.t.Fatalf("clustertest: no image of %q in .cache/images/images.txt", part)
	}
	return ref
}

// Kubectl runs kubectl as the cluster's admin and returns its standard output (the error
// carries its standard error).
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.bins.kube["kubectl"], append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// WaitPodRunning waits until the pod is Running and Ready, and fails early, with the reason,
// when it cannot start (image missing, crash loop, failed).
func (c *Cluster) WaitPodRunning(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var last string
	for {
		p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if p.Status.Phase == corev1.PodRunning && podReady(p) {
				return p, nil
			}
			if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
				return p, fmt.Errorf("pod %s/%s is %s: %s", namespace, name, p.Status.Phase, p.Status.Message)
			}
			last = string(p.Status.Phase)
			for _, cs := range p.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil {
					switch w.Reason {
					case "ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
						return p, fmt.Errorf("pod %s/%s: container %s: %s: %s", namespace, name, cs.Name, w.Reason, w.Message)
					}
					last += ", " + cs.Name + " " + w.Reason
				}
				if cs.RestartCount > 2 {
					return p, fmt.Errorf("pod %s/%s: container %s restarted %d times; last state %+v", namespace, name, cs.Name, cs.RestartCount, cs.LastTerminationState)
				}
			}
			for _, cond := range p.Status.Conditions {
				if cond.Status != corev1.ConditionTrue && cond.Message != "" {
					last += ", " + string(cond.Type) + ": " + cond.Message
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pod %s/%s not Running and Ready: %w (last: %s)", namespace, name, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Stop tears the cluster down (see the package doc) and returns what went wrong; t.Cleanup
// calls it too, failing the test on an error. It is idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	begin := time.Now()
	var errs []error
	if c.releaseE2E != nil {
		defer c.releaseE2E()
	}
	for _, n := range c.Nodes {
		n.stopProcesses()
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(5 * time.Second)
	}
	if c.Cluster != nil {
		c.Cluster.Stop()
	}
	if c.lock == nil {
		return nil // no slot taken: nothing else was made
	}
	if err := sweep(c.Slot); err != nil {
		errs = append(errs, err)
	}
	if err := hostRelease(c.Slot); err != nil {
		errs = append(errs, err)
	}
	unlock(c.lock)
	c.lock = nil
	c.t.Logf("clustertest: cluster %s torn down in %v", c.Name, time.Since(begin).Round(10*time.Millisecond))
	return errors.Join(errs...)
}

// slotAddrs are the addresses of slot s: the host's on the bridge and the cluster's pod range.
func slotAddrs(s int) (host netip.Addr, pods netip.Prefix) {
	host = netip.AddrFrom4([4]byte{10, 250, byte(s), 1})
	pods = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, byte(8 * s), 0}), 21)
	return host, pods
}

func nodeIP(s, i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 250, byte(s), byte(10 + i)}) }

func bridgeName(s int) string { return "ambitk" + strconv.Itoa(s) }

func slotDir(s int) string { return filepath.Join(BaseDir(), "s"+strconv.Itoa(s)) }

// slotCgroupPrefix names a slot's cgroup, followed by the slot's number.
const slotCgroupPrefix = "ambit-cluster-s"

func slotCgroup(s int) string { return slotCgroupPrefix + strconv.Itoa(s) }
