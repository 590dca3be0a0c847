package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/metricstest"
	"ambit.dev/mesh/state"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/ztunnel/internal/netnstest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// The tests run two pods on loopback addresses, each with its own listeners, as they would
// be inside their own network namespaces. The kernel's REDIRECT is the one thing replaced:
// the outbound listener is told the original destination (the real redirection is tested
// in package capture and in the lab).

type mesh struct {
	t      *testing.T
	node   *Node
	state  *state.State
	reg    *prometheus.Registry
	client *Pod
	server *Pod
	dst    netip.AddrPort // original destination the client's connections are "redirected" from
	h3     bool           // pods get UDP sockets and the server workload is marked HBONE_H3
	mu     sync.Mutex
}

const (
	clientIP = "127.0.0.2"
	serverIP = "127.0.0.3"
	vip      = "127.0.0.100"
)

func workloadFor(name, ip, sa string) *configv1.Workload {
	return &configv1.Workload{
		Uid: name, Name: name, Namespace: "shop", ServiceAccount: sa, TrustDomain: "cluster.local",
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: configv1.TunnelProtocol_HBONE,
		Services: map[string]*configv1.PortList{"shop/web.shop.svc.cluster.local": {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}}},
	}
}

func newMesh(t *testing.T) *mesh { t.Helper(); return newMeshWith(t, nil) }

// newMeshWith lets tune change the node before the pods start.
func newMeshWith(t *testing.T, tune func(*Node)) *mesh {
	t.Helper()
	return newMeshProto(t, tune, false)
}

// newMeshProto, with h3, gives the pods UDP sockets and has the controller mark the
// server workload HBONE_H3.
func newMeshProto(t *testing.T, tune func(*Node), h3 bool) *mesh {
	t.Helper()
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mgr := identity.NewManager(identity.ManagerOptions{Signer: ca})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = mgr.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	m := &mesh{t: t, state: state.New(), reg: prometheus.NewRegistry(), h3: h3}
	m.node = &Node{
		State: m.state, Certs: mgr.Certificate, Bundle: ca.Bundle(),
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Logger:      slog.New(slog.DiscardHandler), Metrics: NewMetrics(m.reg),
	}
	if tune != nil {
		tune(m.node)
	}
	cw, sw := workloadFor("client", clientIP, "client"), workloadFor("server", serverIP, "server")
	cw.Services = nil
	if h3 {
		sw.TunnelProtocol = configv1.TunnelProtocol_HBONE_H3
	}
	m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/client": cw, "c//Pod/shop/server": sw})
	m.apply(configv1.ServiceTypeURL, map[string]proto.Message{"shop/web.shop.svc.cluster.local": &configv1.Service{
		Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
		Addresses: []*configv1.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
		Ports:     []*configv1.Port{{ServicePort: 80, TargetPort: 8080}},
	}})
	m.client = m.startPod(cw, clientIP)
	m.server = m.startPod(sw, serverIP)
	return m
}

func (m *mesh) apply(typeURL string, res map[string]proto.Message, removals ...string) {
	m.t.Helper()
	if err := m.state.Apply(typeURL, res, removals); err != nil {
		m.t.Fatal(err)
	}
}

// loopbackNet binds listeners and dials to the pod's own loopback address.
func (m *mesh) loopbackNet(ip string) Net {
	var listenPacket func(string) (net.PacketConn, error)
	if m.h3 {
		listenPacket = func(addr string) (net.PacketConn, error) {
			port := "0"
			if addr != "" {
				_, port, _ = net.SplitHostPort(addr)
			}
			return net.ListenPacket("udp", net.JoinHostPort(ip, port))
		}
	}
	return Net{
		ListenPacket: listenPacket,
		Listen: func(addr string, _ ListenOptions) (net.Listener, error) {
			_, port, _ := net.SplitHostPort(addr)
			return net.Listen("tcp", net.JoinHostPort(ip, port))
		},
		Dial: func(ctx context.Context, addr string, _ DialOptions) (*net.TCPConn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		},
		OriginalDst: func(c *net.TCPConn) (netip.AddrPort, error) {
			if addrOf(c.LocalAddr()).Port() == 15006 {
				return netip.AddrPortFrom(addrOf(c.LocalAddr()).Addr(), 8080), nil
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			return m.dst, nil
		},
	}
}

func (m *mesh) startPod(w *configv1.Workload, ip string) *Pod {
	m.t.Helper()
	p, err := m.node.StartPod(w, m.loopbackNet(ip), Ports{Outbound: ":0", Inbound: ":15006", HBONE: ":15008"})
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { p.Close() })
	return p
}

// app is the server pod's application on 127.0.0.3:8080: it answers with what it saw.
func startApp(t *testing.T) {
	ln, err := net.Listen("tcp", serverIP+":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	netnstest.Serve(ln, func(c net.Conn) {
		req, _ := io.ReadAll(c)
		_, _ = io.WriteString(c, "from "+addrOf(c.RemoteAddr()).Addr().String()+": "+string(req))
	})
}

// call connects as the client application to dst and returns the reply.
func (m *mesh) call(dst string) (string, error) {
	m.mu.Lock()
	m.dst = netip.MustParseAddrPort(dst)
	m.mu.Unlock()
	_, out, _ := m.client.Addrs()
	c, err := net.Dial("tcp", out.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello"); err != nil {
		return "", err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if len(b) == 0 && err == nil {
		err = io.EOF
	}
	return string(b), err
}

func TestPodToPodOverHBONE(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	got, err := m.call(serverIP + ":8080")
	if err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call = %q, %v", got, err)
	}
	// Both ends counted the connection as mutual TLS with the right principals.
	want := `istio_tcp_connections_opened_total{connection_security_policy="mutual_tls",destination_principal="spiffe://cluster.local/ns/shop/sa/server",destination_workload="server",destination_workload_namespace="shop",reporter="source",response_flags="-",source_principal="spiffe://cluster.local/ns/shop/sa/client",source_workload="client",source_workload_namespace="shop",tunnel_protocol="HBONE"} 1`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader("# HELP istio_tcp_connections_opened_total TCP connections opened.\n# TYPE istio_tcp_connections_opened_total counter\n"+want+"\n"+
		`istio_tcp_connections_opened_total{connection_security_policy="mutual_tls",destination_principal="spiffe://cluster.local/ns/shop/sa/server",destination_workload="server",destination_workload_namespace="shop",reporter="destination",response_flags="-",source_principal="spiffe://cluster.local/ns/shop/sa/client",source_workload="unknown",source_workload_namespace="unknown",tunnel_protocol="HBONE"} 1`+"\n"),
		"istio_tcp_connections_opened_total"); err != nil {
		t.Error(err)
	}
	// And both counted the bytes each way once the connection closed, as Istio does
	// whoever reports: received is the request ("hello"), sent the response.
	wait.Until(t, 5*time.Second, "the byte counts of the closed connection", func() error {
		for _, reporter := range []string{"source", "destination"} {
			l := map[string]string{"reporter": reporter}
			sent, received := metricstest.Sum(m.reg, "istio_tcp_sent_bytes_total", l), metricstest.Sum(m.reg, "istio_tcp_received_bytes_total", l)
			if received != 5 || sent != float64(len(got)) {
				return fmt.Errorf("reporter %s: received %v and sent %v bytes, want 5 and %d", reporter, received, sent, len(got))
			}
		}
		return nil
	})
}

// TestPodToPodOverH3: a destination the controller marks HBONE_H3 is reached over HTTP/3,
// with the same identities and policy, and both ends label the connection with it.
func TestPodToPodOverH3(t *testing.T) {
	m := newMeshProto(t, nil, true)
	startApp(t)
	got, err := m.call(serverIP + ":8080")
	if err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call = %q, %v", got, err)
	}
	if m.client.client.FallbackH2(netip.MustParseAddrPort(serverIP + ":15008")) {
		t.Fatal("client fell back to HTTP/2")
	}
	for _, reporter := range []string{"source", "destination"} {
		n := testutil.ToFloat64(m.node.Metrics.opened.With(prometheus.Labels{
			"reporter": reporter, "connection_security_policy": "mutual_tls", "tunnel_protocol": "HBONE_H3",
			"destination_principal": "spiffe://cluster.local/ns/shop/sa/server", "destination_workload": "server",
			"destination_workload_namespace": "shop", "response_flags": "-",
			"source_principal":          "spiffe://cluster.local/ns/shop/sa/client",
			"source_workload":           map[string]string{"source": "client", "destination": "unknown"}[reporter],
			"source_workload_namespace": map[string]string{"source": "shop", "destination": "unknown"}[reporter],
		}))
		if n != 1 {
			t.Errorf("%s: %v connections with tunnel_protocol=HBONE_H3, want 1", reporter, n)
		}
	}
}

func TestServiceVIP(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	got, err := m.call(vip + ":80")
	if err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call via VIP = %q, %v", got, err)
	}
	if _, err := m.call(vip + ":443"); err == nil {
		t.Fatal("a call to a port the service does not have succeeded")
	}
}

func TestL4Policy(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	sw, _ := m.state.Workload(netip.MustParseAddr(serverIP))
	bound := proto.Clone(sw).(*configv1.Workload)
	bound.AuthorizationPolicies = []string{"shop/deny-client"}
	m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/server": bound})
	m.apply(configv1.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-client": &configv1.Authorization{
		Name: "deny-client", Namespace: "shop", Action: configv1.Authorization_DENY,
		Rules: []*configv1.Rule{{From: []*configv1.Source{{Principals: []string{"cluster.local/ns/shop/sa/client"}}}}},
	}})
	if got, err := m.call(serverIP + ":8080"); err == nil {
		t.Fatalf("denied call succeeded: %q", got)
	}
	// Removing the policy restores the call.
	m.apply(configv1.AuthorizationTypeURL, nil, "shop/deny-client")
	if got, err := m.call(serverIP + ":8080"); err != nil {
		t.Fatalf("call after removing the deny policy: %q, %v", got, err)
	}
	// An ALLOW for someone else denies the client; one for the client allows it.
	allowOnly := func(principal string) {
		m.apply(configv1.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-client": &configv1.Authorization{
			Name: "deny-client", Namespace: "shop", Action: configv1.Authorization_ALLOW,
			Rules: []*configv1.Rule{{From: []*configv1.Source{{Principals: []string{principal}}}}},
		}})
	}
	allowOnly("cluster.local/ns/shop/sa/other")
	if _, err := m.call(serverIP + ":8080"); err == nil {
		t.Fatal("call allowed although only another principal is")
	}
	allowOnly("cluster.local/ns/shop/sa/client")
	if _, err := m.call(serverIP + ":8080"); err != nil {
		t.Fatalf("allowed principal refused: %v", err)
	}
	// An L7 rule with no waypoint denies everything.
	m.apply(configv1.AuthorizationTypeURL, map[string]proto.Message{"shop/deny-client": &configv1.Authorization{
		Name: "deny-client", Namespace: "shop", Action: configv1.Authorization_ALLOW,
		Rules: []*configv1.Rule{{To: []*configv1.Operation{{Methods: []string{"GET"}}}}},
	}})
	if _, err := m.call(serverIP + ":8080"); err == nil {
		t.Fatal("L7 policy on a workload without a waypoint did not deny")
	}
}

func TestStrictRefusesPlaintext(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	plain := func() error {
		c, err := net.Dial("tcp", serverIP+":15006")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "plain")
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		if err == nil && len(b) == 0 {
			return errors.New("connection closed without a reply")
		}
		return err
	}
	if err := plain(); err != nil {
		t.Fatalf("PERMISSIVE refused plaintext: %v", err)
	}
	m.state.SetMeshStrict(true)
	if err := plain(); err == nil {
		t.Fatal("STRICT accepted plaintext")
	}
}

func TestWaypointBoundWorkloadRefusesOthers(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	sw, _ := m.state.Workload(netip.MustParseAddr(serverIP))
	bound := proto.Clone(sw).(*configv1.Workload)
	bound.Waypoint = &configv1.GatewayAddress{Identity: "spiffe://cluster.local/ns/shop/sa/waypoint"}
	m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/server": bound})
	// The client dials the pod directly (its waypoint has no address to route by), and the
	// destination refuses anyone but the waypoint.
	if _, err := m.call(serverIP + ":8080"); err == nil {
		t.Fatal("a waypoint-bound workload accepted a direct tunnel")
	}
}

func TestUnknownDestinationPassesThrough(t *testing.T) {
	m := newMesh(t)
	ln, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("outside: "), b...))
	}()
	l := &lineLog{}
	m.client.log = slog.New(l)
	got, err := m.call(ln.Addr().String())
	if err != nil || got != "outside: hello" {
		t.Fatalf("passthrough = %q, %v", got, err)
	}
	// One access log line says where it went; nothing else is logged.
	l.waitLine(t, "outbound closed", "via=passthrough", "dst="+ln.Addr().String())
	if n := len(l.lines("")); n != 1 {
		t.Fatalf("logged %d lines for one passthrough connection: %q", n, l.lines(""))
	}
}

func TestPeerRecordLivesWithConnection(t *testing.T) {
	m := newMesh(t)
	ln, err := net.Listen("tcp", serverIP+":8082")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	netnstest.Serve(ln, func(c net.Conn) {
		_, _ = io.ReadAll(c)
		p, ok := m.node.Peer(addrOf(c.RemoteAddr()), addrOf(c.LocalAddr()))
		fmt.Fprintf(c, "%s %v %v", p.Identity, p.MTLS, ok)
	})
	for range 10 {
		got, err := m.call(serverIP + ":8082")
		if err != nil || got != "spiffe://cluster.local/ns/shop/sa/client true true" {
			t.Fatalf("app saw peer %q, %v", got, err)
		}
	}
	wait.Until(t, 5*time.Second, "no peer records after the connections closed", func() error {
		if n := m.node.Peers(); n != 0 {
			return fmt.Errorf("%d left", n)
		}
		return nil
	})
}

// countHandler counts the log records at warn level and above.
type countHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.mu.Lock()
		h.msgs = append(h.msgs, r.Message)
		h.mu.Unlock()
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// The loopback Net cannot dial from the client's address (as a kernel without
// IP_TRANSPARENT): connections still work, and ztunnel says so once, not per connection.
func TestNoTransparentLogsOnce(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	h := &countHandler{}
	m.server.log = slog.New(h)
	for range 3 {
		if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
			t.Fatalf("call = %q, %v", got, err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.msgs) != 1 || !strings.Contains(h.msgs[0], "original source") {
		t.Fatalf("warnings = %q, want one about the original source", h.msgs)
	}
}

// TestDrain: a draining pod lets its connections finish and returns as soon as they have;
// one that outlives the drain period is closed at its end, on both sides.
func TestDrain(t *testing.T) {
	m := newMesh(t)
	// An application that answers each line and never closes first.
	ln, err := net.Listen("tcp", serverIP+":8083")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c) }()
		}
	}()
	open := func() net.Conn {
		t.Helper()
		m.mu.Lock()
		m.dst = netip.MustParseAddrPort(serverIP + ":8083")
		m.mu.Unlock()
		_, out, _ := m.client.Addrs()
		c, err := net.Dial("tcp", out.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	ends := open()
	stays := open()
	go func() {
		time.Sleep(200 * time.Millisecond)
		ends.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	m.client.Drain(ctx)
	if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
		t.Fatalf("drain with a connection that stays took %s, want the drain period (1s)", d)
	}
	// The connection that stayed is closed: the client reads EOF, the application too.
	_ = stays.SetDeadline(time.Now().Add(2 * time.Second))
	if n, err := stays.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection still open after the drain period (read %d)", n)
	}
	// The listeners are gone.
	_, out, _ := m.client.Addrs()
	if c, err := net.DialTimeout("tcp", out.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("outbound listener still accepts after the drain")
	}
}
