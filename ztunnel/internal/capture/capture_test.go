package capture

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"ambit.dev/ztunnel/internal/netnstest"
	"golang.org/x/sys/unix"
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

// netState is everything Install may touch in a namespace: iptables rules of every table,
// policy rules and routes of every table.
func netState(t *testing.T, path string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(iptablesSave(t, path))
	for _, argv := range [][]string{{"ip", "rule"}, {"ip", "route", "show", "table", "all"}, {"ip", "-6", "rule"}, {"ip", "-6", "route", "show", "table", "all"}} {
		out, err := run(context.Background(), path, nil, argv...)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "\n# %s\n%s", strings.Join(argv, " "), out)
	}
	return b.String()
}

func TestInstallRemoveLeavesNamespaceAsBefore(t *testing.T) {
	pod, _ := testPair(t)
	ctx := t.Context()
	before := netState(t, pod)
	for range 2 { // idempotent
		if err := Install(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	ok, err := Installed(ctx, pod)
	if err != nil || !ok {
		t.Fatalf("after Install twice: installed=%v err=%v\n%s", ok, err, iptablesSave(t, pod))
	}
	if n := strings.Count(iptablesSave(t, pod), "-j "+chainOutput); n != 2 {
		t.Fatalf("%d jumps to %s after two installs, want 2 (nat and mangle)", n, chainOutput)
	}
	if n := strings.Count(netState(t, pod), "lookup 100"); n != 1 {
		t.Fatalf("%d policy rules after two installs, want 1:\n%s", n, netState(t, pod))
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
	// So are a missing policy rule and a missing route.
	if _, err := run(ctx, pod, nil, append([]string{"ip", "rule", "del"}, ipRule...)...); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, pod, nil, append([]string{"ip", "route", "del"}, ipRoute...)...); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Installed(ctx, pod); ok {
		t.Fatal("Installed did not notice the missing policy rule and route")
	}
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Installed(ctx, pod); !ok {
		t.Fatalf("Install did not repair the policy routing:\n%s", netState(t, pod))
	}
	for range 2 {
		if err := Remove(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	if after := netState(t, pod); after != before {
		t.Fatalf("rules after removal differ from before:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

func TestRedirection(t *testing.T) {
	pod, peer := testPair(t)
	ctx := t.Context()
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	listen := func(ns, addr string) net.Listener {
		ln, err := Listen(ns, addr, false)
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
	mc, err := Dial(ctx, pod, "10.250.0.2:9000", DialOptions{})
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
	err := Install(t.Context(), "/var/run/netns/ambit-does-not-exist")
	if err == nil || !strings.Contains(err.Error(), "ambit-does-not-exist") {
		t.Fatalf("install into a vanished namespace: %v", err)
	}
}

// listenApp runs an application in the namespace that answers with the address it sees the
// caller at.
func listenApp(t *testing.T, ns, addr string) {
	t.Helper()
	var app net.Listener
	err := InNetns(ns, func() error {
		var err error
		app, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().String())
			c.Close()
		}
	}()
}

// dialSeen dials addr from inside ns with o and returns where the application saw the
// connection come from.
func dialSeen(t *testing.T, ns, addr string, o DialOptions) netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, ns, addr, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddrPort(string(b))
}

// TestTransparentDial is the inbound dial to an application: from inside the pod, from the
// client's address, with the reply routed back to the dialling socket.
func TestTransparentDial(t *testing.T) {
	pod, _ := testPair(t)
	ctx := t.Context()
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	// Not ctx: t.Context() is done when cleanups run.
	t.Cleanup(func() { _ = Remove(context.Background(), pod) })
	listenApp(t, pod, "10.250.0.1:8080")
	client := netip.MustParseAddrPort("10.250.0.2:40000")
	for range 20 {
		var bound netip.AddrPort
		seen := dialSeen(t, pod, "10.250.0.1:8080", DialOptions{Source: client, Bound: func(l netip.AddrPort) { bound = l }})
		if seen.Addr() != client.Addr() || seen.Port() == client.Port() || seen != bound {
			t.Fatalf("application saw %s, want the client's address %s on another port, as bound (%s)", seen, client.Addr(), bound)
		}
	}
}

// TestTransparentFallback: a kernel that refuses IP_TRANSPARENT gets a connection from the
// pod's own address, still reported before it connects.
func TestTransparentFallback(t *testing.T) {
	pod, _ := testPair(t)
	ctx := t.Context()
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	// Not ctx: t.Context() is done when cleanups run.
	t.Cleanup(func() { _ = Remove(context.Background(), pod) })
	listenApp(t, pod, "10.250.0.1:8080")
	orig := setTransparent
	setTransparent = func(int, bool) error { return unix.EPERM }
	t.Cleanup(func() { setTransparent = orig })
	var bound netip.AddrPort
	seen := dialSeen(t, pod, "10.250.0.1:8080", DialOptions{Source: netip.MustParseAddrPort("10.250.0.2:40000"), Bound: func(l netip.AddrPort) { bound = l }})
	if seen.Addr() != netip.MustParseAddr("10.250.0.1") || seen != bound {
		t.Fatalf("application saw %s (bound %s), want the pod's own address", seen, bound)
	}
}

// TestListenersHandOver: a second listener on the same port joins the first (SO_REUSEPORT)
// and takes every new connection, while the first still accepts what it had queued.
func TestListenersHandOver(t *testing.T) {
	pod, peer := testPair(t)
	old, err := Listen(pod, "0.0.0.0:15008", false)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	dial := func() net.Conn {
		t.Helper()
		var c net.Conn
		err := InNetns(peer, func() error {
			var err error
			c, err = net.DialTimeout("tcp", "10.250.0.1:15008", 5*time.Second)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	queued := dial() // waits in the old listener's accept queue
	cur, err := Listen(pod, "0.0.0.0:15008", false)
	if err != nil {
		t.Fatalf("second listener on the same port: %v", err)
	}
	defer cur.Close()
	var seen []string
	for range 20 {
		seen = append(seen, dial().LocalAddr().String())
	}
	for _, want := range seen {
		cur.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
		c, err := cur.Accept()
		if err != nil {
			t.Fatalf("new listener did not get every new connection: %v", err)
		}
		if got := c.RemoteAddr().String(); got != want {
			t.Fatalf("new listener accepted %s, want %s", got, want)
		}
		c.Close()
	}
	old.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
	c, err := old.Accept()
	if err != nil || c.RemoteAddr().String() != queued.LocalAddr().String() {
		t.Fatalf("old listener: accepted %v, %v; want only the queued connection", c, err)
	}
	c.Close()
	old.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
	if c, err := old.Accept(); err == nil {
		t.Fatalf("old listener got a new connection from %s", c.RemoteAddr())
	}
	// Once the old listener is gone, the new one takes everything, as the only socket.
	old.Close()
	want := dial().LocalAddr().String()
	cur.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	if c, err := cur.Accept(); err != nil || c.RemoteAddr().String() != want {
		t.Fatalf("after the old listener closed: %v, %v", c, err)
	}
}

// threadsIn counts the threads of this process whose network namespace is the one at path.
func threadsIn(t *testing.T, path string) int {
	t.Helper()
	var ns unix.Stat_t
	if err := unix.Stat(path, &ns); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		var st unix.Stat_t
		if unix.Stat("/proc/self/task/"+task.Name()+"/ns/net", &st) == nil && st.Ino == ns.Ino && st.Dev == ns.Dev {
			n++
		}
	}
	return n
}

// TestDialWaitsOutsideNamespace: a dial holds a thread in the pod's namespace only to make
// its socket; while the connection is pending (here to a neighbour that never answers ARP),
// no thread of the process is in the pod's namespace, and none is after the dial fails.
func TestDialWaitsOutsideNamespace(t *testing.T) {
	path, _ := testPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := Dial(ctx, path, "10.250.0.77:80", DialOptions{})
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	for range 20 {
		select {
		case err := <-done:
			t.Fatalf("the dial ended before the test could watch it wait: %v", err)
		default:
		}
		if n := threadsIn(t, path); n != 0 {
			t.Fatalf("%d threads in the pod's namespace while the dial waits for its connection", n)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if err := <-done; err == nil {
		t.Fatal("dial to a silent neighbour succeeded")
	}
	if n := threadsIn(t, path); n != 0 {
		t.Fatalf("%d threads left in the pod's namespace after the dial", n)
	}
}

// keepAliveOn reads SO_KEEPALIVE of c's socket.
func keepAliveOn(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v == 1
}

// TestKeepAliveOffInsidePod: sockets that never leave the pod (a dial to its application,
// the connections a local listener accepts) have no TCP keep-alive; the others keep Go's.
func TestKeepAliveOffInsidePod(t *testing.T) {
	pod, _ := testPair(t)
	listenApp(t, pod, "10.250.0.1:8080")
	for _, local := range []bool{true, false} {
		c, err := Dial(t.Context(), pod, "10.250.0.1:8080", DialOptions{Local: local})
		if err != nil {
			t.Fatal(err)
		}
		if got := keepAliveOn(t, c); got == local {
			t.Errorf("dial with Local %v: keep-alive %v", local, got)
		}
		c.Close()

		ln, err := Listen(pod, "10.250.0.1:0", local)
		if err != nil {
			t.Fatal(err)
		}
		var dialed net.Conn
		if err := InNetns(pod, func() error {
			dialed, err = net.Dial("tcp", ln.Addr().String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got := keepAliveOn(t, a.(*net.TCPConn)); got == local {
			t.Errorf("listener with local %v: accepted connection's keep-alive %v", local, got)
		}
		a.Close()
		dialed.Close()
		ln.Close()
	}
}
