package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// usage is what a path that ends a tunnel early could leak.
func usage(t *testing.T) (goroutines, fds int, heap uint64) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), openFDs(t), ms.HeapInuse
}

// TestEarlyEndsReleaseEverything: every path that ends a tunnel early — the HBONE dial
// fails, policy refuses (401), the destination is unreachable (503), the client resets, the
// dial's deadline passes, the application hangs up at once — run 1,000 times, leaves
// goroutines, file descriptors and heap where they were.
func TestEarlyEndsReleaseEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 tunnels per path")
	}
	const n = 1000
	paths := []struct {
		name  string
		setup func(t *testing.T, m *mesh)
		once  func(t *testing.T, m *mesh)
	}{
		{"dial failure", func(t *testing.T, m *mesh) {
			// A workload of the mesh at an address where no ztunnel listens.
			m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/gone": workloadFor("gone", "127.0.0.9", "gone")})
		}, func(t *testing.T, m *mesh) {
			if got, err := m.call("127.0.0.9:8080"); err == nil {
				t.Fatalf("call to a dead address = %q", got)
			}
		}},
		{"refused by policy", func(t *testing.T, m *mesh) {
			sw, _ := m.state.Workload(netip.MustParseAddr(serverIP))
			bound := proto.Clone(sw).(*configv1.Workload)
			bound.AuthorizationPolicies = []string{"shop/deny-client"}
			m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/server": bound})
			m.apply(configv1.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-client": &configv1.Authorization{
				Name: "deny-client", Namespace: "shop", Action: configv1.Authorization_DENY,
				Rules: []*configv1.Rule{{From: []*configv1.Source{{Principals: []string{"cluster.local/ns/shop/sa/client"}}}}},
			}})
		}, func(t *testing.T, m *mesh) {
			if got, err := m.call(serverIP + ":8080"); err == nil {
				t.Fatalf("denied call = %q", got)
			}
		}},
		{"destination unreachable", nil, func(t *testing.T, m *mesh) {
			if got, err := m.call(serverIP + ":9"); err == nil {
				t.Fatalf("call to a closed port = %q", got)
			}
		}},
		{"client reset", nil, func(t *testing.T, m *mesh) {
			m.mu.Lock()
			m.dst = netip.MustParseAddrPort(serverIP + ":8080")
			m.mu.Unlock()
			_, out, _ := m.client.Addrs()
			c, err := net.Dial("tcp", out.String())
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.WriteString(c, "hel")
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}},
		{"dial deadline", nil, func(t *testing.T, m *mesh) {
			ctx, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
			defer cancel()
			st, err := m.client.client.Dial(ctx, hbone.Target{
				Source: m.client.id, Address: netip.MustParseAddrPort(serverIP + ":15008"),
				Identities: []spiffeid.ID{m.server.id}, Authority: netip.MustParseAddrPort(serverIP + ":8080"),
			})
			if err == nil {
				st.Close()
				t.Fatal("dial past its deadline succeeded")
			}
		}},
		{"application hangs up", func(t *testing.T, m *mesh) {
			ln, err := net.Listen("tcp", serverIP+":8081")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}, func(t *testing.T, m *mesh) {
			if got, err := m.call(serverIP + ":8081"); got != "" {
				t.Fatalf("call to an application that hangs up = %q, %v", got, err)
			}
		}},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			// Under load more than 100 streams can be open at once, and the client pools a
			// second tunnel (two sockets, its goroutines) that is no leak: it closes when
			// idle. A short idle timeout lets it go within the wait below. The dial-deadline
			// path needs its pooled tunnel to stay, so it keeps the default.
			m := newMeshWith(t, func(n *Node) {
				if p.name != "dial deadline" {
					n.HBONE.IdleTimeout = time.Second
				}
			})
			startApp(t)
			if p.setup != nil {
				p.setup(t, m)
			}
			for range 20 { // warm the pools, the certificate cache and the runtime
				p.once(t, m)
			}
			// The baseline is taken at rest: the warm-up's connections ended and a dial its
			// callers abandoned finished (it pools one connection, released when idle).
			wait.Until(t, 10*time.Second, "warm-up settled", func() error {
				if c := m.client.openConns() + m.server.openConns(); c != 0 {
					return fmt.Errorf("%d connections open", c)
				}
				if p.name == "dial deadline" && m.client.client.Conns() == 0 {
					return fmt.Errorf("no pooled connection yet")
				}
				return nil
			})
			g0, f0, h0 := usage(t)
			for range n {
				p.once(t, m)
			}
			var g, f int
			var h uint64
			wait.Until(t, 10*time.Second, fmt.Sprintf("goroutines, fds and heap back near where they were before %d × %s", n, p.name), func() error {
				if c := m.client.openConns() + m.server.openConns(); c != 0 {
					return fmt.Errorf("%d connections still tracked", c)
				}
				if g, f, h = usage(t); g > g0+2 || f > f0+2 || h > h0+4<<20 {
					return fmt.Errorf("goroutines %d → %d, fds %d → %d, heap %d → %d KiB", g0, g, f0, f, h0>>10, h>>10)
				}
				return nil
			})
			t.Logf("%d × %s: goroutines %d → %d, fds %d → %d, heap in use %d → %d KiB, pooled tunnels %d", n, p.name, g0, g, f0, f, h0>>10, h>>10, m.client.client.Conns())
		})
	}
}
