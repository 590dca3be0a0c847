package capture

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"ambit.dev/ztunnel/internal/netnstest"
)

func testPair(t *testing.T) (pod, peer string) { return netnstest.Pair(t) }

func iptablesSave(t *testing.T, path string) string {
	t.Helper()
	out, err := run(context.Background(), path, nil, "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	// Drop the comment lines with timestamps and the packet counters.
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			l = strings.Fields(l)[0] + " " + strings.Fields(l)[1]
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func TestInstallRemoveLeavesNamespaceAsBefore(t *testing.T) {
	pod, _ := testPair(t)
	ctx := context.Background()
	before := iptablesSave(t, pod)
	for range 2 { // idempotent
		if err := Install(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	ok, err := Installed(ctx, pod)
	if err != nil || !ok {
		t.Fatalf("after Install twice: installed=%v err=%v\n%s", ok, err, iptablesSave(t, pod))
	}
	if n := strings.Count(iptablesSave(t, pod), "-j "+chainOutput); n != 1 {
		t.Fatalf("%d jumps to %s after two installs, want 1", n, chainOutput)
	}
	// Rules changed behind ztunnel's back are detected and repaired.
	if _, err := run(ctx, pod, nil, "iptables", "-t", "nat", "-F", chainPrerouting); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Installed(ctx, pod); ok {
		t.Fatal("Installed did not notice a flushed chain")
	}
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Installed(ctx, pod); !ok {
		t.Fatal("Install did not repair the flushed chain")
	}
	for range 2 {
		if err := Remove(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	if after := iptablesSave(t, pod); after != before {
		t.Fatalf("rules after removal differ from before:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

func TestRedirection(t *testing.T) {
	pod, peer := testPair(t)
	ctx := context.Background()
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	listen := func(ns, addr string) net.Listener {
		ln, err := Listen(ns, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	outbound := listen(pod, "0.0.0.0:15001")
	inbound := listen(pod, "0.0.0.0:15006")
	hbone := listen(pod, "0.0.0.0:15008")
	peerApp := listen(peer, "10.250.0.2:9000")

	accept := func(ln net.Listener) *net.TCPConn {
		t.Helper()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("accept on %s: %v", ln.Addr(), err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	plainDial := func(ns, addr string) net.Conn {
		t.Helper()
		var c net.Conn
		err := InNetns(ns, func() error {
			var err error
			c, err = net.DialTimeout("tcp", addr, 5*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// The pod's own outbound connection is captured, with its original destination intact.
	plainDial(pod, "10.250.0.2:9000")
	c := accept(outbound)
	dst, err := OriginalDst(c)
	if err != nil || dst != netip.MustParseAddrPort("10.250.0.2:9000") {
		t.Fatalf("outbound original destination = %v, %v", dst, err)
	}
	// ztunnel's marked dial from inside the pod is not captured: it reaches the peer.
	mc, err := Dial(ctx, pod, "10.250.0.2:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	pc := accept(peerApp)
	if got := pc.RemoteAddr().(*net.TCPAddr).IP.String(); got != "10.250.0.1" {
		t.Fatalf("marked dial arrived from %s, want the pod's address", got)
	}
	// Inbound plaintext to the pod goes to 15006, keeping the caller's address.
	plainDial(peer, "10.250.0.1:8080")
	ic := accept(inbound)
	if dst, err := OriginalDst(ic); err != nil || dst != netip.MustParseAddrPort("10.250.0.1:8080") {
		t.Fatalf("inbound original destination = %v, %v", dst, err)
	}
	if got := ic.RemoteAddr().(*net.TCPAddr).IP.String(); got != "10.250.0.2" {
		t.Fatalf("inbound source = %s, want the peer's address", got)
	}
	// HBONE to 15008 is not redirected.
	hc := plainDial(peer, "10.250.0.1:15008")
	if _, err := hc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(accept(hbone), b); err != nil || b[0] != 'x' {
		t.Fatalf("HBONE port read %q, %v", b, err)
	}
	// A connection that was not redirected has no original destination.
	if _, err := OriginalDst(pc); err == nil {
		t.Fatal("OriginalDst on a direct connection succeeded")
	}
	// After removal the pod's traffic flows directly again.
	if err := Remove(ctx, pod); err != nil {
		t.Fatal(err)
	}
	plainDial(pod, "10.250.0.2:9000")
	accept(peerApp)
}

func TestInstallMissingNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	err := Install(context.Background(), "/var/run/netns/ambit-does-not-exist")
	if err == nil || !strings.Contains(err.Error(), "ambit-does-not-exist") {
		t.Fatalf("install into a vanished namespace: %v", err)
	}
}
