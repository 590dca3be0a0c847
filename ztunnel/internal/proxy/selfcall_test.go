package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/wait"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A peer with a valid certificate asks the server pod's ztunnel to CONNECT to one of
// ztunnel's own ports on the pod's address. Before the refusal, one such request to the
// outbound port looped: the tunnel's upstream entered the outbound listener, which opened a
// tunnel back to the same pod, and so on. Every own port is refused with 400 naming the
// reason, and 1,000 refusals leave goroutines, file descriptors and heap where they were.
func TestSelfCallRefused(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	// The server pod's outbound listener, where a CONNECT would loop: its original
	// destination (the test's stand-in for SO_ORIGINAL_DST) is the address itself.
	_, out, _ := m.server.Addrs()
	outPort := uint16(out.(interface{ AddrPort() netip.AddrPort }).AddrPort().Port())
	m.mu.Lock()
	m.dst = netip.AddrPortFrom(netip.MustParseAddr(serverIP), outPort)
	m.mu.Unlock()

	src := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	target := func(port uint16) hbone.Target {
		return hbone.Target{
			Source: src, Address: netip.MustParseAddrPort(serverIP + ":15008"),
			Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/server")},
			Authority:  netip.AddrPortFrom(netip.MustParseAddr(serverIP), port),
		}
	}
	refused := func(port uint16) {
		t.Helper()
		ctx := t.Context()
		st, err := m.client.client.Dial(ctx, target(port))
		if err == nil {
			st.Close()
			t.Fatalf("CONNECT %s:%d accepted", serverIP, port)
		}
		var he *hbone.Error
		if !errors.As(err, &he) || he.Status != 400 || !strings.Contains(he.Reason, "self call") {
			t.Fatalf("CONNECT %s:%d: %v, want 400 naming the self call", serverIP, port, err)
		}
	}
	for _, port := range append([]uint16{outPort}, MeshPorts...) {
		refused(port)
	}
	// The pod's own application still answers through the same pooled tunnel.
	if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call after the refusals = %q, %v", got, err)
	}

	settle := func() (goroutines, fds int, heap uint64) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), openFDs(t), ms.HeapInuse
	}
	g0, f0, h0 := settle()
	for i := range 1000 {
		refused([]uint16{outPort, 15001, 15006, 15008}[i%4])
	}
	var g, f int
	var h uint64
	wait.Until(t, 5*time.Second, "goroutines, fds and heap back near where they were before 1,000 refused self-calls", func() error {
		if g, f, h = settle(); g > g0+2 || f > f0+2 || h > h0+4<<20 {
			return fmt.Errorf("goroutines %d → %d, fds %d → %d, heap %d → %d KiB", g0, g, f0, f, h0>>10, h>>10)
		}
		return nil
	})
	t.Logf("1,000 refused self-calls: goroutines %d → %d, fds %d → %d, heap in use %d → %d KiB", g0, g, f0, f, h0>>10, h>>10)
}

// A pod's own connection to one of ztunnel's ports on its own address is refused at once
// by the outbound side, with no tunnel opened.
func TestOutboundToOwnPortRefused(t *testing.T) {
	l := &lineLog{}
	m := newMeshWith(t, func(n *Node) { n.Logger = slog.New(l) })
	for _, dst := range []string{clientIP + ":15008", clientIP + ":15006", "127.0.0.1:15001"} {
		if got, err := m.call(dst); err == nil || got != "" {
			t.Fatalf("call to %s = %q, %v; want the connection closed", dst, got, err)
		}
	}
	if n := len(l.lines("outbound refused")); n != 3 {
		t.Fatalf("logged %d outbound refusals, want 3: %q", n, l.lines(""))
	}
	for _, line := range l.lines("outbound refused") {
		if !strings.Contains(line, "self call refused") {
			t.Fatalf("refusal %q does not name the self call", line)
		}
	}
	// The refused connection's handler untracks it just after closing it, which the caller
	// may see first: wait for it, bounded.
	wait.Until(t, 5*time.Second, "the refused connections to be let go", func() error {
		if n := m.client.openConns(); n != 0 {
			return fmt.Errorf("%d connections still open", n)
		}
		return nil
	})
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
