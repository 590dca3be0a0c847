package netnstest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPairIsSettled: Pair returns namespaces whose addresses and routes no longer change on
// their own, so before/after snapshots of a namespace do not race the kernel: the links are
// up with their carrier, and no IPv6 address or route exists, nor can appear later.
func TestPairIsSettled(t *testing.T) {
	a, b := Pair(t)
	for _, ns := range []string{a, b} {
		name := filepath.Base(ns)
		if err := carrier(name); err != nil {
			t.Errorf("%s: eth0 without carrier when Pair returned: %v", name, err)
		}
		for _, k := range []string{"all", "default", "lo", "eth0"} {
			out, err := exec.Command("ip", "netns", "exec", name, "sysctl", "-n", "net.ipv6.conf."+k+".disable_ipv6").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "1" {
				t.Errorf("%s: net.ipv6.conf.%s.disable_ipv6 = %q, %v; want 1", name, k, out, err)
			}
		}
		for _, argv := range [][]string{{"-6", "addr", "show"}, {"-6", "route", "show", "table", "all"}} {
			out, err := exec.Command("ip", append([]string{"-n", name}, argv...)...).CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) != 0 {
				t.Errorf("%s: ip %s = %q, %v; want nothing", name, strings.Join(argv, " "), out, err)
			}
		}
	}
}
