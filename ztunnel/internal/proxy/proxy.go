// Package proxy is ztunnel's data plane for one enrolled pod: the outbound listener (15001)
// that sends the pod's connections over HBONE under the pod's identity, the HBONE listener
// (15008) that terminates tunnels for the pod and enforces L4 policy, and the inbound
// plaintext listener (15006) that applies PeerAuthentication. Like Istio's in-pod mode, each
// pod gets its own listeners inside its own network namespace, so a connection's pod is
// known from the listener it arrived on, never guessed from an address.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/hbone"
	"ambit.dev/proto/identity"
	"ambit.dev/ztunnel/internal/state"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Node holds what every pod's proxy on this node shares.
type Node struct {
	State  *state.State
	Certs  func(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error)
	Bundle x509bundle.Source
	// TrustDomain is used to derive identities from workloads that name none.
	TrustDomain spiffeid.TrustDomain
	Logger      *slog.Logger
	Metrics     *Metrics
	// HBONE tunes the tunnels; zero means the defaults of design.md.
	HBONE hbone.ConnConfig
}

// Net is how a pod's proxy touches the network: in production, inside the pod's network
// namespace with marked sockets (package capture); in tests, plain loopback sockets.
type Net struct {
	Listen func(addr string) (net.Listener, error)
	Dial   func(ctx context.Context, addr string) (*net.TCPConn, error)
	// OriginalDst recovers where a redirected connection was going.
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
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
	lns    []net.Listener
	wg     sync.WaitGroup
	lb     *balancer
	ctx    context.Context
	cancel context.CancelFunc
}

// WorkloadIdentity is the SPIFFE ID of a workload.
func WorkloadIdentity(w *configv1.Workload, fallback spiffeid.TrustDomain) (spiffeid.ID, error) {
	td := fallback
	if w.GetTrustDomain() != "" {
		t, err := spiffeid.TrustDomainFromString(w.GetTrustDomain())
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("workload %s/%s: trust domain: %w", w.GetNamespace(), w.GetName(), err)
		}
		td = t
	}
	return identity.WorkloadID(td, w.GetNamespace(), w.GetServiceAccount())
}

// StartPod opens the pod's three listeners and serves them until Close.
func (n *Node) StartPod(w *configv1.Workload, nw Net, ports Ports) (*Pod, error) {
	id, err := WorkloadIdentity(w, n.TrustDomain)
	if err != nil {
		return nil, err
	}
	if ports.Outbound == "" {
		ports = Ports{Outbound: ":15001", Inbound: ":15006", HBONE: ":15008"}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pod{node: n, net: nw, w: w, id: id, ctx: ctx, cancel: cancel, lb: newBalancer(),
		log: n.Logger.With("pod", w.GetNamespace()+"/"+w.GetName())}
	p.client, err = hbone.NewClient(hbone.ClientConfig{
		ConnConfig:  n.HBONE,
		Certificate: n.Certs,
		Bundle:      n.Bundle,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return nw.Dial(ctx, addr) },
	})
	if err != nil {
		cancel()
		return nil, err
	}
	p.server, err = hbone.NewServer(hbone.ServerConfig{
		ConnConfig: n.HBONE,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return n.Certs(hello.Context(), id)
		},
		Bundle:  n.Bundle,
		Handler: hbone.HandlerFunc(p.serveHBONE),
	})
	if err != nil {
		cancel()
		return nil, err
	}
	for _, l := range []struct {
		addr  string
		serve func(net.Listener)
	}{
		{ports.HBONE, func(ln net.Listener) { _ = p.server.Serve(ln) }},
		{ports.Outbound, p.serveTCP(p.outbound)},
		{ports.Inbound, p.serveTCP(p.inboundPlain)},
	} {
		ln, err := nw.Listen(l.addr)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("pod %s/%s: %w", w.GetNamespace(), w.GetName(), err)
		}
		p.lns = append(p.lns, ln)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			l.serve(ln)
		}()
	}
	return p, nil
}

// Addrs returns the listeners' addresses: outbound, inbound, HBONE order as in Ports.
func (p *Pod) Addrs() (hboneAddr, outbound, inbound net.Addr) {
	return p.lns[0].Addr(), p.lns[1].Addr(), p.lns[2].Addr()
}

// Close stops the listeners and ends the pod's connections.
func (p *Pod) Close() error {
	p.cancel()
	for _, ln := range p.lns {
		ln.Close()
	}
	p.client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.server.Shutdown(ctx)
	p.wg.Wait()
	return nil
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
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				handle(c.(*net.TCPConn))
			}()
		}
	}
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
