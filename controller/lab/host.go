package lab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"
)

// names are the host objects of a lab, all derived from one prefix so that `lab down` finds
// them again after a crash without any record.
type names struct{ prefix string }

func (n names) bridge() string         { return n.prefix + "br" }
func (n names) veth(i int) string      { return fmt.Sprintf("%sv%d", n.prefix, i) }
func (n names) netns(p Pod) string     { return n.prefix + "-" + p.Namespace + "-" + p.Name }
func (n names) netnsPath(p Pod) string { return "/var/run/netns/" + n.netns(p) }

// run runs a command and returns its error with the command line and output.
func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func output(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

func linkExists(ctx context.Context, name string) bool {
	return exec.CommandContext(ctx, "ip", "link", "show", "dev", name).Run() == nil
}

// makeBridge creates the lab bridge with the gateway address, if it is not there yet.
func makeBridge(ctx context.Context, t *Topology, n names) error {
	br := n.bridge()
	if !linkExists(ctx, br) {
		if err := run(ctx, "ip", "link", "add", br, "type", "bridge"); err != nil {
			return err
		}
	}
	// The bridge only joins lab pods: no IPv6 autoconfiguration chatter on it.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+br+"/disable_ipv6", []byte("1"), 0o644)
	if err := run(ctx, "ip", "addr", "replace", t.Gateway().String(), "dev", br); err != nil {
		return err
	}
	return run(ctx, "ip", "link", "set", br, "up")
}

// makePod creates pod i's network namespace and joins it to the bridge. A namespace left by
// an earlier run is made again from scratch.
func makePod(ctx context.Context, t *Topology, n names, i int) error {
	p := t.Pods[i]
	addr := netip.PrefixFrom(netip.MustParseAddr(p.IP), t.Gateway().Bits())
	if err := makeNetns(ctx, n.netns(p), n.veth(i), n.bridge(), addr, t.Gateway().Addr()); err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// podMAC is the hardware address of the pod interface at addr: locally administered
// (02:a8:) and then the four bytes of the address, as Docker derives its containers'. A pod
// made again at the same address (a restarted waypoint, `lab up` over an old lab) keeps its
// MAC, so the neighbours' ARP entries stay right; with a random one, the other pods went on
// sending to the old address until their entries went stale, 10-20 s in which every new
// connection to the pod timed out.
func podMAC(addr netip.Addr) string {
	a := addr.As4()
	return fmt.Sprintf("02:a8:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// makeNetns (re)creates the network namespace ns with eth0 at addr (its MAC podMAC's),
// joined to bridge by the veth link, with a default route via gw. It is IPv4 only.
func makeNetns(ctx context.Context, ns, link, bridge string, addr netip.Prefix, gw netip.Addr) error {
	_ = run(ctx, "ip", "netns", "del", ns)
	if linkExists(ctx, link) {
		_ = run(ctx, "ip", "link", "del", link)
	}
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	// No IPv6 link-local address appearing some time later.
	for _, k := range []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"} {
		if err := run(ctx, "ip", "netns", "exec", ns, "sysctl", "-qw", k); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", link, "master", bridge, "up"},
		{"-n", ns, "link", "set", "eth0", "address", podMAC(addr.Addr())},
		{"-n", ns, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		// The default route lets a pod reach Service VIPs, which its ztunnel captures.
		{"-n", ns, "route", "add", "default", "via", gw.String()},
	}
	for _, s := range steps {
		if err := run(ctx, "ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// removeHost deletes every namespace and link whose name starts with the lab prefix,
// whether or not a record of them survived.
func removeHost(ctx context.Context, n names) []error {
	var errs []error
	out, err := output(ctx, "ip", "netns", "list")
	if err != nil {
		errs = append(errs, err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], n.prefix+"-") {
			continue
		}
		if err := run(ctx, "ip", "netns", "del", f[0]); err != nil {
			errs = append(errs, err)
		}
	}
	out, err = output(ctx, "ip", "-o", "link", "show")
	if err != nil {
		errs = append(errs, err)
	}
	for _, line := range strings.Split(out, "\n") {
		// "12: ambitlabv3@if2: <BROADCAST,..."
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if name == n.bridge() || strings.HasPrefix(name, n.prefix+"v") {
			if err := run(ctx, "ip", "link", "del", name); err != nil && linkExists(ctx, name) {
				errs = append(errs, err)
			}
		}
	}
	return errs
}
