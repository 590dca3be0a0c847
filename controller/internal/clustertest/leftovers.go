package clustertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type syscallStat = syscall.Stat_t

func statNS(pid int, kind string, st *syscall.Stat_t) error {
	return syscall.Stat(filepath.Join("/proc", strconv.Itoa(pid), "ns", kind), st)
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// unmount detaches a mount the host should not have (lazily: a busy one goes when released).
func unmount(target string) error {
	if err := syscall.Unmount(target, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// linksWithPrefix lists the host's network interfaces whose name starts with prefix.
func linksWithPrefix(ctx context.Context, prefix string) []string {
	out, err := exec.CommandContext(ctx, "ip", "-o", "link", "show").Output()
	if err != nil {
		return nil
	}
	var links []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, prefix) {
			links = append(links, name)
		}
	}
	return links
}

// hostSnapshot is what of the host a cluster must leave as it found it and could touch by
// mistake: firewall chains and tables, sysctls.
type hostSnapshot struct {
	chains  []string // iptables and ip6tables chains, nftables tables
	sysctls map[string]string
	dirs    []string // the mountpoints (and their parents) that exist
}

func snapshotHost(ctx context.Context, mountpoints []string) hostSnapshot {
	s := hostSnapshot{sysctls: map[string]string{}}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, _ := exec.CommandContext(ctx, tool).Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, ":") {
				s.chains = append(s.chains, tool+" "+strings.Fields(line[1:])[0])
			}
		}
	}
	out, _ := exec.CommandContext(ctx, "nft", "list", "tables").Output()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			s.chains = append(s.chains, "nft "+line)
		}
	}
	for _, k := range kubeletSysctls {
		s.sysctls[k], _ = readSysctl(k)
	}
	for _, d := range mountpoints {
		for p := d; p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil && !slices.Contains(s.dirs, p) {
				s.dirs = append(s.dirs, p)
			}
		}
	}
	return s
}

// Leftovers lists what the cluster left on the host after Stop, one description each; empty
// when the host is as Start found it: no process of the cluster (in its cgroups or naming its
// directory), no cgroup, no mount under its directory or on the nodes' mountpoints, no network
// namespace of a node still held, no link of its bridge, no route to its pods, no firewall
// chain (KUBE-*, CNI-*) or nftables table of kube-proxy that was not there before, no state
// directory; and, when no other
// cluster is running, the kubelet's sysctls back at the values before Start.
func (c *Cluster) Leftovers() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var left []string
	for _, pid := range cgroupProcs(c.cgroup) {
		left = append(left, "process "+describePid(pid)+" in cgroup "+c.cgroup)
	}
	for _, pid := range procsMentioning(c.StateDir + "/") {
		left = append(left, "process "+describePid(pid)+" naming "+c.StateDir)
	}
	for _, d := range cgroupLeft(c.cgroup) {
		left = append(left, "cgroup "+d)
	}
	for _, m := range mountsUnder(c.StateDir) {
		left = append(left, "mount "+m)
	}
	for _, mp := range c.mountpoints {
		if mp == "/run/netns" {
			// The host's own network namespaces (`ip netns add`, the lab's) are mounts there;
			// the nodes' pods' are in the nodes' private mount namespaces and go with them.
			continue
		}
		for _, m := range mountsUnder(mp) {
			left = append(left, "mount "+m)
		}
	}
	left = append(left, c.nodeNetnsHeld()...)
	for _, l := range linksWithPrefix(ctx, c.Bridge) {
		left = append(left, "link "+l)
	}
	if out, err := exec.CommandContext(ctx, "ip", "route", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, c.Bridge) || strings.HasPrefix(line, "10.251.") && strings.Contains(line, "via 10.250."+strconv.Itoa(c.Slot)+".") {
				left = append(left, "route "+line)
			}
		}
	}
	// Only what a node could leave: other tests on the machine may add firewall rules of
	// their own meanwhile.
	after := snapshotHost(ctx, c.mountpoints)
	for _, ch := range after.chains {
		if !slices.Contains(c.before.chains, ch) && (strings.Contains(ch, " KUBE-") || strings.Contains(ch, " CNI-") || strings.Contains(ch, "kube")) {
			left = append(left, "firewall: "+ch)
		}
	}
	if _, err := os.Stat(c.StateDir); err == nil {
		left = append(left, "directory "+c.StateDir)
	}
	if _, err := os.Stat(filepath.Join(BaseDir(), "host.json")); os.IsNotExist(err) && c.recorded {
		for k, v := range c.before.sysctls {
			if after.sysctls[k] != v {
				left = append(left, fmt.Sprintf("sysctl %s = %s, was %s", k, after.sysctls[k], v))
			}
		}
		for _, d := range after.dirs {
			// Present now, absent before: made by the harness and not removed.
			if !slices.Contains(c.before.dirs, d) {
				left = append(left, "directory "+d)
			}
		}
	}
	return left
}

// nodeNetnsHeld lists the processes still in one of the nodes' network namespaces. The kernel
// reuses a freed namespace's inode number, so a namespace another slot's cluster made since
// can carry one of ours: an inode held by a process in another slot's cgroup is that
// cluster's, not a leftover (a live inode names one namespace at a time).
func (c *Cluster) nodeNetnsHeld() []string {
	if len(c.holderIno) == 0 {
		return nil
	}
	holders := map[uint64][]int{}
	reused := map[uint64]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ino, err := nsInode(pid, "net")
		if err != nil || !slices.Contains(c.holderIno, ino) {
			continue
		}
		holders[ino] = append(holders[ino], pid)
		if s, ok := pidSlot(pid); ok && s != c.Slot {
			reused[ino] = true
		}
	}
	var left []string
	for _, ino := range c.holderIno {
		if reused[ino] {
			continue
		}
		for _, pid := range holders[ino] {
			left = append(left, "network namespace of a node, held by process "+describePid(pid))
		}
	}
	return left
}

// pidSlot is the cluster slot whose cgroup (ambit-cluster-sN) holds pid, if any.
func pidSlot(pid int) (int, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return 0, false
	}
	const prefix = "/" + slotCgroupPrefix
	for _, line := range strings.Split(string(b), "\n") {
		i := strings.Index(line, prefix)
		if i < 0 {
			continue
		}
		rest := line[i+len(prefix):]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			rest = rest[:j]
		}
		if s, err := strconv.Atoi(rest); err == nil {
			return s, true
		}
	}
	return 0, false
}

func describePid(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(cmd) > 120 {
		cmd = cmd[:120] + "…"
	}
	return strconv.Itoa(pid) + " (" + cmd + ")"
}
