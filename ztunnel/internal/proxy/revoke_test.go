package proxy

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/revoke"
	"ambit.dev/mesh/revoke/revoketest"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// peerTunnels counts the inbound tunnels the node tracks by peer.
func (p *Pod) peerTunnels() int { return p.node.rev.Live(spiffeid.ID{}) }

// openCall opens a connection as the client application to dst, through the client pod's
// outbound listener, sends hello and keeps the connection open.
func (m *mesh) openCall(t *testing.T, dst string) net.Conn {
	t.Helper()
	m.mu.Lock()
	m.dst = netip.MustParseAddrPort(dst)
	m.mu.Unlock()
	_, out, _ := m.client.Addrs()
	c, err := net.Dial("tcp", out.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRevokedPeerClosed: when the client's workload leaves the state (its pod deleted, its
// ServiceAccount or namespace removed), the server pod's ztunnel closes the live tunnel that
// carries the client's identity within seconds, and refuses new ones with 401.
func TestRevokedPeerClosed(t *testing.T) {
	m := newMesh(t)
	// The application answers only when the client half-closes: the connection stays open.
	startApp(t)
	if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call = %q, %v", got, err)
	}
	live := m.openCall(t, serverIP+":8080")
	// The tunnel is up once the server pod holds it.
	deadline := time.Now().Add(5 * time.Second)
	for m.server.peerTunnels() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the live tunnel never reached the server pod")
		}
		time.Sleep(5 * time.Millisecond)
	}

	start := time.Now()
	m.apply(configv1.WorkloadTypeURL, nil, "c//Pod/shop/client")
	_ = live.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(live)
	took := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the live connection of a revoked identity stayed open for 10 s")
	}
	t.Logf("live connection of the revoked identity closed %v after the state change", took)
	if took > 5*time.Second {
		t.Fatalf("closed after %v, want within seconds", took)
	}
	// New connections of the revoked identity are refused: the client application's
	// connection is closed without a reply.
	if got, err := m.call(serverIP + ":8080"); err == nil && got != "" {
		t.Fatalf("call after revocation = %q, want refused", got)
	}
	if n := m.server.peerTunnels(); n != 0 {
		t.Fatalf("%d tunnels of a revoked peer still tracked", n)
	}
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	if closed, refused := revoketest.Count(m.reg, reporterDestination, client, revoke.ResultClosed), revoketest.Count(m.reg, reporterDestination, client, revoke.ResultRefused); closed != 1 || refused < 1 {
		t.Fatalf("ambit_revoked_connections_total closed %v, refused %v; want 1, at least 1", closed, refused)
	}
	// The identity comes back (the pod is recreated): it is served again.
	cw := workloadFor("client", clientIP, "client")
	cw.Services = nil
	m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/client": cw})
	if got, err := m.call(serverIP + ":8080"); err != nil || !strings.HasSuffix(got, "hello") {
		t.Fatalf("call after the identity came back = %q, %v", got, err)
	}
}
