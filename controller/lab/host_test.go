package lab

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// A pod made again at the same address keeps its MAC (podMAC), so that its neighbours' ARP
// entries stay right across a waypoint's restart.
func TestPodKeepsMACWhenMadeAgain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, a bridge and a veth")
	}
	ctx := context.Background()
	const br, link, ns = "ambmacbr", "ambmacv0", "ambmac-pod"
	if err := run(ctx, "ip", "link", "add", br, "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = run(ctx, "ip", "netns", "del", ns)
		_ = run(ctx, "ip", "link", "del", br)
	})
	addr := netip.MustParsePrefix("10.250.99.7/24")
	var macs []string
	for range 2 {
		if err := makeNetns(ctx, ns, link, br, addr, netip.MustParseAddr("10.250.99.1")); err != nil {
			t.Fatal(err)
		}
		out, err := output(ctx, "ip", "-n", ns, "-br", "link", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(out)
		if len(f) < 3 {
			t.Fatalf("ip -br link: %q", out)
		}
		macs = append(macs, f[2])
	}
	if want := "02:a8:0a:fa:63:07"; macs[0] != want || macs[1] != want {
		t.Fatalf("eth0's MAC %v, want %s both times", macs, want)
	}
}
