// Package proxy is ztunnel's data plane for one enrolled pod: the outbound listener (15001)
// that sends the pod's connections over HBONE under the pod's identity, the HBONE listener
// (15008) that terminates tunnels for the pod and enforces L4 policy, and the inbound
// plaintext listener (15006) that applies PeerAuthentication. Like Istio's in-pod mode, each
// pod gets its own listeners inside its own network namespace, so a connection's pod is
// known from the listener it arrived on, never guessed from an address.
//
// Inbound, the connection to the application comes from the original client's address when
// the Net can (DialOptions.Source), and every such connection is recorded with its verified
// peer until it closes (Node.Peer), so the application can ask who called. A pod's proxy
// can hand its ports over to a newer process (StopAccepting) and drain (Drain).
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/revoke"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Node holds what every pod's proxy on this node shares.
type Node struct {
	State *state.State
	Certs func(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error)
	// Prefetch, when set, starts fetching a pod's certificate as soon as the pod is
	// captured, so that it is in hand before the first connection, and also when the
	// controller is away at that moment.
	Prefetch func(id spiffeid.ID)
	Bundle   x509bundle.Source
	// TrustDomain is used to derive identities from workloads that name none.
	TrustDomain spiffeid.TrustDomain
	Logger      *slog.Logger
	Metrics     *Metrics
	// HBONE tunes the tunnels; zero means the defaults of design.md.
	HBONE hbone.ConnConfig

	peers         peerTable
	noTransparent sync.Once       // logs, once, that the original source cannot be kept
	rev           *revoke.Tracker // set by the first StartPod (revoke.go)
	revokeOnce    sync.Once
	podsMu        sync.Mutex
	pods          map[*Pod]struct{}
}

// Net is how a pod's proxy touches the network: in production, inside the pod's network
// namespace with marked sockets (package capture); in tests, plain loopback sockets.
type Net struct {
	Listen func(addr string, o ListenOptions) (net.Listener, error)
	Dial   func(ctx context.Context, addr string, o DialOptions) (*net.TCPConn, error)
	// OriginalDst recovers where a redirected connection was going.
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
	// ListenPacket, when set, opens a UDP socket in the pod's namespace ("" for an
	// ephemeral port): the pod then serves HBONE over HTTP/3 on UDP 15008 and dials HTTP/3
	// to peers the controller marks HBONE_H3. Nil keeps the pod on HTTP/2.
	ListenPacket func(addr string) (net.PacketConn, error)
}

// DialOptions shape the connection ztunnel opens to an application in its pod.
type DialOptions struct {
	// Source, when valid, is the original client: the connection should come from its
	// address (IP_TRANSPARENT) so that the application sees who called, and from a port
	// other than Source's, which the kernel's connection tracking may still hold for the
	// client's own connection. A Net that cannot do this uses the pod's own address.
	Source netip.AddrPort
	// Bound, if not nil, is called with the connection's local address once the socket is
	// bound and before it connects, so that the connection is known before the
	// application can see it.
	Bound func(local netip.AddrPort)
	// Local: the connection stays inside the pod (ztunnel to the pod's application), so
	// TCP keep-alive, which could only probe the pod's own loopback, stays off.
	Local bool
}

// ListenOptions shape a listener in the pod.
type ListenOptions struct {
	// Local: the listener's connections come from the pod's own applications (the
	// outbound capture), so they get no TCP keep-alive.
	Local bool
}

// Ports are the listen addresses inside the pod; zero values mean the standard ports on all
// addresses.
type Ports struct {
	Outbound, Inbound, HBONE string
}

// Pod is one enrolled pod's proxy.
type Pod struct {
	node *Node
	net  Net
	w    *configv1.Workload
	id   spiffeid.ID
	log  *slog.Logger

	client *hbone.Client
	server *hbone.Server
	lns    []*drainListener
	ports  []uint16       // the listeners' ports, for the self-call check (selfcall.go)
	accept sync.WaitGroup // accept loops
	h3     sync.WaitGroup // the HTTP/3 listener, which ends with the server's Shutdown
	wg     sync.WaitGroup // TCP connection handlers
	lb     *balancer
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[io.Closer]struct{} // every connection of the pod's TCP handlers, closed by Close
	closed bool
}

func (n *Node) addPod(p *Pod) {
	n.podsMu.Lock()
	defer n.podsMu.Unlock()
	if n.pods == nil {
		n.pods = map[*Pod]struct{}{}
	}
	n.pods[p] = struct{}{}
}

func (n *Node) removePod(p *Pod) {
	n.podsMu.Lock()
	delete(n.pods, p)
	n.podsMu.Unlock()
}

// StartPod opens the pod's three listeners and serves them until Close.
func (n *Node) StartPod(w *configv1.Workload, nw Net, ports Ports) (*Pod, error) {
	id, err := identity.WorkloadIdentity(w, n.TrustDomain)
	if err != nil {
		return nil, err
	}
	if n.Prefetch != nil {
		n.Prefetch(id)
	}
	if ports.Outbound == "" {
		ports = Ports{Outbound: ":15001", Inbound: ":15006", HBONE: ":15008"}
	}
	n.watchRevocations()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pod{node: n, net: nw, w: w, id: id, ctx: ctx, cancel: cancel, lb: newBalancer(), conns: map[io.Closer]struct{}{},
		log: n.Logger.With("pod", w.GetNamespace()+"/"+w.GetName())}
	// The tunnels' own lines (a refused handshake, a peer that stalls) name the pod.
	cc := n.HBONE
	if cc.Logger == nil {
		cc.Logger = p.log
	}
	p.client, err = hbone.NewClient(hbone.ClientConfig{
		ConnConfig:   cc,
		Certificate:  n.Certs,
		Bundle:       n.Bundle,
		DialContext:  func(ctx context.Context, _, addr string) (net.Conn, error) { return nw.Dial(ctx, addr, DialOptions{}) },
		ListenPacket: listenPacket(nw),
	})
	if err != nil {
		cancel()
		return nil, err
	}
	p.server, err = hbone.NewServer(hbone.ServerConfig{
		ConnConfig: cc,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return n.Certs(hello.Context(), id)
		},
		Bundle:         n.Bundle,
		CheckAuthority: p.checkAuthority,
		Handler:        hbone.HandlerFunc(p.serveHBONE),
	})
	if err != nil {
		cancel()
		return nil, err
	}
	// Every listener opens before any serves, so that the self-call check knows all the
	// ports from the first connection on.
	serve := []func(net.Listener){
		func(ln net.Listener) { _ = p.server.Serve(ln) }, p.serveTCP(p.outbound), p.serveTCP(p.inboundPlain),
	}
	for _, addr := range []string{ports.HBONE, ports.Outbound, ports.Inbound} {
		inner, err := nw.Listen(addr, ListenOptions{Local: addr == ports.Outbound})
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("pod %s/%s: %w", w.GetNamespace(), w.GetName(), err)
		}
		p.lns = append(p.lns, newDrainListener(inner))
		p.ports = append(p.ports, listenerPort(inner))
	}
	for i, ln := range p.lns {
		p.accept.Add(1)
		go func() {
			defer p.accept.Done()
			serve[i](ln)
		}()
	}
	n.addPod(p)
	if nw.ListenPacket != nil {
		// HTTP/3 on the UDP port of the same number as the HBONE listener's.
		host, _, _ := net.SplitHostPort(ports.HBONE)
		pc, err := nw.ListenPacket(net.JoinHostPort(host, fmt.Sprint(listenerPort(p.lns[0]))))
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("pod %s/%s: hbone udp: %w", w.GetNamespace(), w.GetName(), err)
		}
		p.h3.Add(1)
		go func() {
			defer p.h3.Done()
			_ = p.server.ServeH3(pc)
		}()
	}
	return p, nil
}

// listenPacket adapts Net.ListenPacket to the hbone client's hook.
func listenPacket(nw Net) func(ctx context.Context, network, addr string) (net.PacketConn, error) {
	if nw.ListenPacket == nil {
		return nil
	}
	return func(_ context.Context, _, addr string) (net.PacketConn, error) { return nw.ListenPacket(addr) }
}

// Addrs returns the listeners' addresses: outbound, inbound, HBONE order as in Ports.
func (p *Pod) Addrs() (hboneAddr, outbound, inbound net.Addr) {
	return p.lns[0].Addr(), p.lns[1].Addr(), p.lns[2].Addr()
}

// Close stops the listeners and ends the pod's connections.
func (p *Pod) Close() error {
	p.node.removePod(p)
	p.cancel()
	for _, ln := range p.lns {
		ln.Close()
	}
	p.accept.Wait()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.server.Shutdown(ctx)
	p.h3.Wait()
	p.wg.Wait()
	return nil
}

// StopAccepting hands the pod's ports over to another process: each listener accepts what
// is already queued, until none arrives for a short while, and then closes. A newer
// listener on the same port (SO_REUSEPORT, with the steering program of package capture)
// takes the new connections meanwhile. The connections accepted so far carry on.
func (p *Pod) StopAccepting() {
	for _, ln := range p.lns {
		ln.drain()
	}
	p.accept.Wait()
}

// Drain stops accepting, lets the pod's connections finish until ctx ends, then closes
// whatever is left. HBONE peers are told (GOAWAY) to open new tunnels elsewhere.
func (p *Pod) Drain(ctx context.Context) {
	p.StopAccepting()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.server.Shutdown(ctx) // waits for the tunnels' streams, up to ctx
		}()
		p.wg.Wait()
		wg.Wait()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		p.node.Logger.Info("drain period over; closing the connections left", "pod", p.w.GetNamespace()+"/"+p.w.GetName(), "connections", p.openConns())
	}
	p.Close()
	<-done
}

// track records a connection for Close to end; false means the pod is closed, and the
// connection is closed now.
func (p *Pod) track(c io.Closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Pod) untrack(c io.Closer) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Pod) openConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// serveTCP accepts plain TCP connections and hands each to handle.
func (p *Pod) serveTCP(handle func(*net.TCPConn)) func(net.Listener) {
	return func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					p.log.Warn("accept failed", "listener", ln.Addr().String(), "err", err)
				}
				return
			}
			tc := c.(*net.TCPConn)
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				tc.Close()
				continue
			}
			p.conns[tc] = struct{}{}
			p.wg.Add(1)
			p.mu.Unlock()
			go func() {
				defer p.wg.Done()
				defer p.untrack(tc)
				handle(tc)
			}()
		}
	}
}

// drainQuiet is how long a draining listener must see no connection before it closes:
// once a newer socket takes the port's new connections, only those already queued (or
// finishing their handshake) can still arrive.
const drainQuiet = 100 * time.Millisecond

// drainListener is a listener that can stop gracefully: on drain it keeps accepting until
// its queue has been empty for drainQuiet, then closes, so no queued connection is reset.
type drainListener struct {
	net.Listener
	draining chan struct{}
	once     sync.Once
}

type deadliner interface{ SetDeadline(time.Time) error }

func newDrainListener(ln net.Listener) *drainListener {
	return &drainListener{Listener: ln, draining: make(chan struct{})}
}

func (l *drainListener) isDraining() bool {
	select {
	case <-l.draining:
		return true
	default:
		return false
	}
}

func (l *drainListener) drain() {
	l.once.Do(func() {
		close(l.draining)
		if d, ok := l.Listener.(deadliner); ok {
			_ = d.SetDeadline(time.Now().Add(drainQuiet)) // wakes a blocked Accept
		} else {
			l.Listener.Close()
		}
	})
}

func (l *drainListener) Accept() (net.Conn, error) {
	draining := l.isDraining()
	if draining {
		if d, ok := l.Listener.(deadliner); ok {
			_ = d.SetDeadline(time.Now().Add(drainQuiet))
		}
	}
	c, err := l.Listener.Accept()
	if err != nil && l.isDraining() && errors.Is(err, os.ErrDeadlineExceeded) {
		l.Listener.Close()
		return nil, net.ErrClosed
	}
	return c, err
}

// peerNamespace extracts the namespace of a workload identity, "" if it is not one.
func peerNamespace(id spiffeid.ID) string {
	w, err := identity.WorkloadFromID(id)
	if err != nil {
		return ""
	}
	return w.Namespace
}

func addrOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
