package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// testCA is a CA for one trust domain with helpers to issue SVIDs to tests.
type testCA struct {
	ca *identity.CA
	td spiffeid.TrustDomain
}

func newTestCA(t testing.TB, td string, opts ...func(*identity.CAOptions)) *testCA {
	t.Helper()
	o := identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString(td)}
	for _, f := range opts {
		f(&o)
	}
	ca, err := identity.NewCA(o)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca: ca, td: o.TrustDomain}
}

func (c *testCA) id(ns, sa string) spiffeid.ID {
	id, err := identity.WorkloadID(c.td, ns, sa)
	if err != nil {
		panic(err)
	}
	return id
}

func (c *testCA) issue(t testing.TB, id spiffeid.ID, ttl time.Duration) *tls.Certificate {
	t.Helper()
	return identitytest.Issue(t, c.ca, id, ttl)
}

// certStore hands out one certificate per identity and can be swapped under live traffic.
type certStore struct {
	mu    sync.Mutex
	certs map[spiffeid.ID]*tls.Certificate
}

func (s *certStore) set(id spiffeid.ID, c *tls.Certificate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.certs == nil {
		s.certs = map[spiffeid.ID]*tls.Certificate{}
	}
	s.certs[id] = c
}

func (s *certStore) get(_ context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.certs[id]; c != nil {
		return c, nil
	}
	return nil, errors.New("no certificate for " + id.String())
}

// env is an HBONE server on 127.0.0.1 in front of an echo server, and a client.
type env struct {
	t        testing.TB
	ca       *testCA
	clientID spiffeid.ID
	serverID spiffeid.ID
	certs    *certStore
	server   *Server
	addr     netip.AddrPort // the HBONE listener
	echo     netip.AddrPort // the destination behind it
	client   *Client
	handler  Handler
	proto    Protocol // what target() asks for; ProtocolH3 also serves HTTP/3 on UDP
}

type envOption func(*env, *ServerConfig, *ClientConfig)

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	ca := newTestCA(t, "cluster.local")
	e := &env{
		t:        t,
		ca:       ca,
		clientID: ca.id("default", "client"),
		serverID: ca.id("default", "server"),
		certs:    &certStore{},
	}
	e.certs.set(e.clientID, ca.issue(t, e.clientID, 0))
	e.certs.set(e.serverID, ca.issue(t, e.serverID, 0))
	e.echo = startEcho(t)
	e.handler = HandlerFunc(func(ctx context.Context, r *Request) { _ = Forward(ctx, r, dialTCP) })

	scfg := ServerConfig{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return e.certs.get(context.Background(), e.serverID)
		},
		Bundle:  ca.ca.Bundle(),
		Handler: HandlerFunc(func(ctx context.Context, r *Request) { e.handler.ServeHBONE(ctx, r) }),
	}
	ccfg := ClientConfig{Certificate: e.certs.get, Bundle: ca.ca.Bundle()}
	for _, o := range opts {
		o(e, &scfg, &ccfg)
	}
	srv, err := NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	e.server = srv
	e.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	if e.proto == ProtocolH3 {
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(e.addr))
		if err != nil {
			t.Fatal(err)
		}
		go srv.ServeH3(pc)
	}
	cl, err := NewClient(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	e.client = cl
	t.Cleanup(func() {
		cl.Close()
		srv.Close()
	})
	return e
}

func (e *env) target() Target {
	return Target{Source: e.clientID, Address: e.addr, Identities: []spiffeid.ID{e.serverID}, Authority: e.echo, Protocol: e.proto}
}

// withProto makes the env speak p: for ProtocolH3 the server also serves HTTP/3 on the UDP
// port of the same number and targets ask for HTTP/3.
func withProto(p Protocol) envOption {
	return func(e *env, _ *ServerConfig, _ *ClientConfig) { e.proto = p }
}

// eachProtocol runs f once over HTTP/2 and once over HTTP/3: the two transports share one
// API and one contract.
func eachProtocol(t *testing.T, f func(t *testing.T, proto envOption)) {
	for _, p := range []Protocol{ProtocolH2, ProtocolH3} {
		t.Run(p.String(), func(t *testing.T) { f(t, withProto(p)) })
	}
}

func dialTCP(ctx context.Context, dst netip.AddrPort) (HalfCloser, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// startEcho runs a TCP echo server that copies until EOF, then half-closes.
func startEcho(t testing.TB) netip.AddrPort {
	return startTCP(t, func(c *net.TCPConn) {
		buf := make([]byte, 32<<10)
		_, _ = io.CopyBuffer(c, c, buf)
		_ = c.CloseWrite()
	})
}

// startTCP serves every accepted connection with fn on 127.0.0.1.
func startTCP(t testing.TB, fn func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
