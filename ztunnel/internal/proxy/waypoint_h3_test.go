package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"testing"

	"ambit.dev/mesh/hbone"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// fakeWaypoint is an HBONE server (TCP and UDP 15008 on addr) with a waypoint's identity that
// forwards every request to the server pod's application and records the protocol each
// arrived on.
type fakeWaypoint struct {
	mu     sync.Mutex
	protos []hbone.Protocol
}

func startFakeWaypoint(t *testing.T, m *mesh, addr string, id spiffeid.ID) *fakeWaypoint {
	t.Helper()
	wp := &fakeWaypoint{}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) { return m.node.Certs(hello.Context(), id) },
		Bundle:         m.node.Bundle,
		// A waypoint serves the authorities of the workloads bound to it, not its own address.
		CheckAuthority: func(context.Context, *hbone.Request) error { return nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) {
			wp.mu.Lock()
			wp.protos = append(wp.protos, r.Protocol)
			wp.mu.Unlock()
			_ = hbone.Forward(ctx, r, func(ctx context.Context, _ netip.AddrPort) (hbone.HalfCloser, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", serverIP+":8080")
				if err != nil {
					return nil, err
				}
				return c.(*net.TCPConn), nil
			})
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr+":15008")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", addr+":15008")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	go func() { _ = srv.ServeH3(pc) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return wp
}

// seen is the protocols of the tunnels the waypoint received so far, in order.
func (wp *fakeWaypoint) seen() []hbone.Protocol {
	wp.mu.Lock()
	defer wp.mu.Unlock()
	return append([]hbone.Protocol(nil), wp.protos...)
}

// TestToWaypointOverH3: a workload bound to a waypoint that the controller marks HBONE_H3 is
// reached through the waypoint over HTTP/3; marked HBONE (or unset, an older controller), over
// HTTP/2.
func TestToWaypointOverH3(t *testing.T) {
	m := newMeshProto(t, nil, true)
	startApp(t)
	const wpIP = "127.0.0.50"
	wpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/wp")
	wp := startFakeWaypoint(t, m, wpIP, wpID)
	sw, _ := m.state.Workload(netip.MustParseAddr(serverIP))
	for i, tc := range []struct {
		mark configv1.TunnelProtocol
		want hbone.Protocol
	}{
		{configv1.TunnelProtocol_HBONE_H3, hbone.ProtocolH3},
		{configv1.TunnelProtocol_HBONE, hbone.ProtocolH2},
		{configv1.TunnelProtocol_NONE, hbone.ProtocolH2},
	} {
		bound := proto.Clone(sw).(*configv1.Workload)
		bound.Waypoint = &configv1.GatewayAddress{
			Address:  &configv1.NetworkAddress{Address: netip.MustParseAddr(wpIP).AsSlice()},
			Identity: wpID.String(), TunnelProtocol: tc.mark,
		}
		m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/server": bound})
		got, err := m.call(serverIP + ":8080")
		if err != nil || got == "" {
			t.Fatalf("%v: call through the waypoint = %q, %v", tc.mark, got, err)
		}
		if seen := wp.seen(); len(seen) != i+1 || seen[i] != tc.want {
			t.Errorf("binding marked %v: the waypoint's tunnels so far %v, want the call's on %v", tc.mark, seen, tc.want)
		}
	}
}
