// Package netnstest builds throwaway network namespaces for root-only tests: two "hosts"
// joined by a veth pair, removed when the test ends.
package netnstest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
)

// Pair makes namespaces a (10.250.0.1/24) and b (10.250.0.2/24) joined by a veth pair and
// returns their paths. It skips the test when not root.
//
// The namespaces are IPv4 only, as the lab's pods are: with IPv6 on, the kernel gives eth0 a
// link-local address (and its local route) only once duplicate address detection ends, some
// time after the link is up and later still on a busy machine, so a test's "before" snapshot
// of addresses or routes could miss what its "after" snapshot has. For the same reason Pair
// returns only once both links are up with their carrier.
func Pair(t testing.TB) (a, b string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth links and iptables rules")
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	nsA, nsB := "ambit-t-a-"+id, "ambit-t-b-"+id
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", nsA)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsA).Run() })
	ip("netns", "add", nsB)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsB).Run() })
	// Before any link is made or up: "all" covers lo, "default" the veth ends made next.
	for _, ns := range []string{nsA, nsB} {
		for _, k := range []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"} {
			ip("netns", "exec", ns, "sysctl", "-qw", k)
		}
	}
	ip("-n", nsA, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsB)
	ip("-n", nsA, "addr", "add", "10.250.0.1/24", "dev", "eth0")
	ip("-n", nsB, "addr", "add", "10.250.0.2/24", "dev", "eth0")
	for _, ns := range []string{nsA, nsB} {
		ip("-n", ns, "link", "set", "eth0", "up")
		ip("-n", ns, "link", "set", "lo", "up")
	}
	// The veth's carrier reaches the link's state and the routes through the kernel's link
	// watch, up to a second after both ends are up (until then the routes say "linkdown").
	// Returning before would let a test's first snapshot differ from its later ones.
	for _, ns := range []string{nsA, nsB} {
		wait.Until(t, 10*time.Second, "carrier on eth0 in "+ns, func() error { return carrier(ns) })
	}
	return "/var/run/netns/" + nsA, "/var/run/netns/" + nsB
}

// carrier says why ns's eth0 is not yet up, with carrier, in its state and its routes.
func carrier(ns string) error {
	link, err := exec.Command("ip", "-n", ns, "-o", "link", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip link: %v: %s", err, link)
	}
	if !strings.Contains(string(link), " state UP ") {
		return fmt.Errorf("link %s", bytes.TrimSpace(link))
	}
	routes, err := exec.Command("ip", "-n", ns, "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip route: %v: %s", err, routes)
	}
	if strings.Contains(string(routes), "linkdown") {
		return fmt.Errorf("routes:\n%s", routes)
	}
	return nil
}
