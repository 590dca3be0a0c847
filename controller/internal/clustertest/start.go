package clustertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"ambit.dev/controller/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// readImages reads <root>/.cache/images/images.txt: part → ref, and part → tarball path.
func readImages(root string) (refs, files map[string]string, err error) {
	dir := filepath.Join(root, ".cache", "images")
	data, err := os.ReadFile(filepath.Join(dir, "images.txt"))
	if err != nil {
		return nil, nil, fmt.Errorf("no image list: run `make images` (it builds the images into .cache/images): %w", err)
	}
	refs, files = map[string]string{}, map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, nil, fmt.Errorf("%s: bad line %q", filepath.Join(dir, "images.txt"), line)
		}
		name, _, _ := strings.Cut(f[0], ":")
		part := name[strings.LastIndex(name, "/")+1:]
		refs[part], files[part] = f[0], filepath.Join(dir, f[2])
		if _, err := os.Stat(files[part]); err != nil {
			return nil, nil, fmt.Errorf("image %s: %w: run `make images`", part, err)
		}
	}
	if refs["pause"] == "" {
		return nil, nil, fmt.Errorf("%s has no pause image: run `make images`", filepath.Join(dir, "images.txt"))
	}
	return refs, files, nil
}

// takeSlot sweeps every slot a dead test left behind and takes the first free one.
func takeSlot() (int, *os.File, error) {
	if err := sweepDead(); err != nil {
		return 0, nil, err
	}
	for s := range MaxSlots {
		f, ok, err := lock(slotLockPath(s), false)
		if err != nil {
			return 0, nil, err
		}
		if !ok {
			continue // a live cluster
		}
		if _, err := os.Stat(slotDir(s)); err == nil || len(cgroupLeft(slotCgroup(s))) > 0 {
			// Died between sweepDead and here.
			if err := sweep(s); err != nil {
				unlock(f)
				return 0, nil, fmt.Errorf("sweeping slot %d of a dead test: %w", s, err)
			}
		}
		return s, f, nil
	}
	return 0, nil, fmt.Errorf("all %d cluster slots of %s are taken", MaxSlots, BaseDir())
}

// Sweep removes what every cluster whose test died left on the machine (Start does it too),
// and puts the host's sysctls back when no cluster lives.
func Sweep() error {
	if err := sweepDead(); err != nil {
		return err
	}
	return hostRelease(-1)
}

// sweepDead sweeps the slots that are not locked and still have a directory or cgroups.
func sweepDead() error {
	if err := os.MkdirAll(BaseDir(), 0o755); err != nil {
		return err
	}
	var errs []error
	for s := range MaxSlots {
		if _, err := os.Stat(slotDir(s)); err != nil && len(cgroupLeft(slotCgroup(s))) == 0 {
			continue
		}
		f, ok, err := lock(slotLockPath(s), false)
		if err != nil {
			return err
		}
		if !ok {
			continue // a live cluster
		}
		if err := sweep(s); err != nil {
			errs = append(errs, fmt.Errorf("sweeping slot %d of a dead test: %w", s, err))
		}
		unlock(f)
	}
	return errors.Join(errs...)
}

// sweep removes everything of slot s: its processes, mounts on the host, links, cgroups and
// directory. The caller holds the slot's lock. It is what Stop does after stopping the
// processes gracefully, and what Start does to a dead test's slot.
func sweep(s int) error {
	var errs []error
	dir := slotDir(s)
	cg := slotCgroup(s)
	if err := cgroupKill(cg, 20*time.Second); err != nil {
		errs = append(errs, err)
	}
	// A process that escaped the cgroup (started and not yet moved when its test died).
	for _, pid := range procsMentioning(dir) {
		_ = killPid(pid)
	}
	for _, m := range mountsUnder(dir) {
		if err := unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, l := range linksWithPrefix(ctx, bridgeName(s)) {
		if err := run(ctx, "ip", "link", "del", l); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	if err := cgroupRemove(cg, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if len(mountsUnder(dir)) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, fmt.Errorf("%s still has mounts: %v; left in place", dir, mountsUnder(dir)))
	}
	return errors.Join(errs...)
}

func (c *Cluster) start(ctx context.Context, root string, o Options) error {
	refs, files, err := readImages(root)
	if err != nil {
		return err
	}
	c.Images = refs
	c.Version = refs["pause"][strings.LastIndex(refs["pause"], ":")+1:]
	imports := []string{files["pause"]}
	for part, f := range files {
		if part != "pause" && (len(o.Images) == 0 || slices.Contains(o.Images, part)) {
			imports = append(imports, f)
		}
	}
	for _, part := range o.Images {
		if files[part] == "" {
			return fmt.Errorf("no image of %q in .cache/images/images.txt", part)
		}
	}
	slices.Sort(imports)

	c.mountpoints = slices.Clone(nodeMountpoints)
	for _, p := range o.HostPaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return fmt.Errorf("host path %q: want a clean absolute path", p)
		}
		if !slices.Contains(c.mountpoints, p) {
			c.mountpoints = append(c.mountpoints, p)
		}
	}
	c.before = snapshotHost(ctx, c.mountpoints)
	slot, l, err := takeSlot()
	if err != nil {
		return err
	}
	c.Slot, c.lock = slot, l
	c.Name = "ambit-s" + strconv.Itoa(slot)
	c.StateDir = slotDir(slot)
	c.cgroup = slotCgroup(slot)
	c.HostIP, c.PodCIDR = slotAddrs(slot)
	c.Bridge = bridgeName(slot)
	_, hostErr := os.Stat(filepath.Join(BaseDir(), "host.json"))
	c.recorded = errors.Is(hostErr, os.ErrNotExist)
	if err := hostAcquire(c.mountpoints); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(c.StateDir, "control"), 0o755); err != nil {
		return err
	}
	if err := cgroupCreate(c.cgroup); err != nil {
		return err
	}
	if err := c.hostBridge(ctx); err != nil {
		return err
	}

	// Control plane.
	begin := time.Now()
	control := filepath.Join(c.StateDir, "control")
	var startErr error
	c.Cluster = kubetest.StartWith(c.t, kubetest.Options{
		Dir:         control,
		Address:     c.HostIP.String(),
		Port:        APIServerPort,
		ServiceCIDR: ServiceCIDR,
		APIServerArgs: []string{
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-client-certificate=" + kubetest.PKIDir(control, "kubelet-client.crt"),
			"--kubelet-client-key=" + kubetest.PKIDir(control, "kubelet-client.key"),
			"--endpoint-reconciler-type=lease",
		},
		Started: func(name string, pid int) {
			if err := cgroupAdd(c.cgroup, pid); err != nil && startErr == nil {
				startErr = fmt.Errorf("%s: %w", name, err)
			}
		},
	})
	if startErr != nil {
		return startErr
	}
	if c.Kubeconfig, err = c.Cluster.Kubeconfig(c.Config); err != nil {
		return err
	}
	if err := c.startControllers(ctx); err != nil {
		return err
	}
	c.ControlPlaneUp = time.Since(begin)

	// Nodes.
	begin = time.Now()
	for i := range o.Nodes {
		n := &Node{c: c, Index: i, Name: "node" + strconv.Itoa(i), IP: nodeIP(slot, i)}
		c.Nodes = append(c.Nodes, n)
		if err := n.start(ctx, imports, !o.NoKubeProxy); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	for _, n := range c.Nodes {
		if err := n.network(ctx); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	for _, n := range c.Nodes {
		if err := n.waitReady(ctx); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	c.NodesReady = time.Since(begin)
	return nil
}

// hostBridge makes the cluster's bridge on the host with the control plane's address.
func (c *Cluster) hostBridge(ctx context.Context) error {
	for _, args := range [][]string{
		{"ip", "link", "add", c.Bridge, "type", "bridge"},
		{"ip", "addr", "add", c.HostIP.String() + "/24", "dev", c.Bridge},
		{"ip", "link", "set", c.Bridge, "up"},
	} {
		if err := run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// startControllers starts kube-controller-manager (which also assigns every node its pod
// CIDR) and kube-scheduler, each with a client certificate of its own user.
func (c *Cluster) startControllers(ctx context.Context) error {
	control := filepath.Join(c.StateDir, "control")
	kubeconfig := func(user string) (string, error) {
		cfg, err := c.ConfigFor(user)
		if err != nil {
			return "", err
		}
		return c.Cluster.Kubeconfig(cfg)
	}
	cmKubeconfig, err := kubeconfig("system:kube-controller-manager")
	if err != nil {
		return err
	}
	schedKubeconfig, err := kubeconfig("system:kube-scheduler")
	if err != nil {
		return err
	}
	cm, err := startProc("kube-controller-manager", filepath.Join(control, "kube-controller-manager.log"), c.cgroup,
		c.bins.kube["kube-controller-manager"],
		"--kubeconfig="+cmKubeconfig,
		"--authentication-kubeconfig="+cmKubeconfig,
		"--authorization-kubeconfig="+cmKubeconfig,
		"--bind-address="+c.HostIP.String(),
		"--secure-port=10257",
		"--cert-dir="+filepath.Join(control, "controller-manager-certs"),
		"--service-account-private-key-file="+c.PKIFile("sa.key"),
		"--root-ca-file="+c.PKIFile("ca.crt"),
		"--use-service-account-credentials=true",
		"--allocate-node-cidrs=true",
		"--cluster-cidr="+c.PodCIDR.String(),
		"--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--leader-elect=false",
		"--v=1",
	)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, cm)
	sched, err := startProc("kube-scheduler", filepath.Join(control, "kube-scheduler.log"), c.cgroup,
		c.bins.kube["kube-scheduler"],
		"--kubeconfig="+schedKubeconfig,
		"--authentication-kubeconfig="+schedKubeconfig,
		"--authorization-kubeconfig="+schedKubeconfig,
		"--bind-address="+c.HostIP.String(),
		"--secure-port=10259",
		"--leader-elect=false",
		"--v=1",
	)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, sched)
	// The controller manager is up when it has made the kube-root-ca.crt ConfigMap.
	for {
		_, err := c.Client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		for _, p := range c.procs {
			if p.exited() {
				return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(30))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-controller-manager did not publish kube-root-ca.crt: %w\n%s", ctx.Err(), cm.tail(30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nodeObject gets the node's Node.
func (c *Cluster) nodeObject(ctx context.Context, name string) (*corev1.Node, error) {
	return c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

// procsMentioning lists the processes whose command line contains s.
func procsMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists the host's mountpoints at or under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}
