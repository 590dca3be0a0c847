package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ClientConfig configures a Client. Certificate and Bundle are required.
type ClientConfig struct {
	ConnConfig
	// Certificate returns the SVID to present for a source identity; a certificate
	// manager's Certificate method fits.
	Certificate func(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error)
	// Bundle holds the trust anchors servers must chain to.
	Bundle x509bundle.Source
	// DialContext opens the TCP connection to an HBONE endpoint. ztunnel supplies one that
	// dials from inside the source pod's network namespace with its socket mark.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// ListenPacket opens the UDP socket of one HTTP/3 connection (addr is "": any local
	// address). ztunnel supplies one that opens it inside the source pod's network namespace
	// with its socket mark. Nil means net.ListenUDP on all addresses. A *net.UDPConn lets
	// QUIC use GSO, GRO and batched reads.
	ListenPacket func(ctx context.Context, network, addr string) (net.PacketConn, error)
}

// Target says where a stream goes and under whose identity.
type Target struct {
	// Source is the identity whose certificate the client presents.
	Source spiffeid.ID
	// Address is the HBONE endpoint: the destination pod's or waypoint's IP and 15008.
	Address netip.AddrPort
	// Identities are the identities the server may prove; at least one is required.
	Identities []spiffeid.ID
	// Authority is the CONNECT target: the destination pod IP:port, or the service
	// VIP:port when Address is a waypoint.
	Authority netip.AddrPort
	// Forwarded is the original client address, sent as Forwarded: for=.
	Forwarded netip.AddrPort
	// Traceparent and Baggage carry W3C trace context across the tunnel.
	Traceparent, Baggage string
	// Protocol is what the destination speaks, from pushed config. ProtocolH3 tries
	// HTTP/3 on UDP Address first; when no QUIC handshake completes within
	// H3HandshakeTimeout, the client uses HTTP/2 to Address for H3FallbackPeriod.
	Protocol Protocol
}

// poolKey is the pool's key: connections are never shared across source identities.
type poolKey struct {
	src, dst string
	addr     netip.AddrPort
}

func keyOf(t Target) poolKey {
	ids := make([]string, len(t.Identities))
	for i, id := range t.Identities {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	return poolKey{src: t.Source.String(), dst: strings.Join(ids, ","), addr: t.Address}
}

// Client opens HBONE streams over pooled connections.
type Client struct {
	cfg ClientConfig
	h2  *pool[*conn]
	h3  *pool[*h3conn]

	mu     sync.Mutex
	h3down map[netip.AddrPort]time.Time // HTTP/3 failed here: HTTP/2 until then
}

// NewClient validates cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Certificate == nil {
		return nil, errors.New("hbone client: Certificate is required")
	}
	if cfg.Bundle == nil {
		return nil, errors.New("hbone client: Bundle is required")
	}
	cc, err := cfg.ConnConfig.withDefaults(DefaultClientMaxStreams)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig = cc
	if cfg.DialContext == nil {
		d := &net.Dialer{}
		cfg.DialContext = d.DialContext
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = func(_ context.Context, network, _ string) (net.PacketConn, error) {
			return net.ListenUDP(network, nil)
		}
	}
	c := &Client{cfg: cfg}
	c.h2 = newPool(cfg.MaxStreams, cfg.HandshakeTimeout, c.connect)
	c.h3 = newPool(cfg.MaxStreams, cfg.HandshakeTimeout, c.dialH3Conn)
	return c, nil
}

// Dial opens a stream to t.Authority through the HBONE endpoint t.Address. It returns
// only after the server answered 200, i.e. after the server reached the destination.
func (c *Client) Dial(ctx context.Context, t Target) (*Stream, error) {
	if !t.Address.IsValid() || !t.Authority.IsValid() {
		return nil, &Error{Kind: KindProtocol, Reason: "target needs an address and an authority"}
	}
	if len(t.Identities) == 0 {
		return nil, &Error{Kind: KindIdentity, Reason: "target names no expected server identity"}
	}
	if t.Source.IsZero() {
		return nil, &Error{Kind: KindIdentity, Reason: "target names no source identity"}
	}
	if t.Protocol == ProtocolH3 && c.h3Usable(t.Address) {
		st, err := c.dialH3(ctx, t)
		if _, ok := errors.AsType[*h3UnavailableError](err); !ok {
			return st, err
		}
	}
	// A stream the peer's GOAWAY left unprocessed (a ztunnel handing over, a connection
	// closed for idleness) reached nobody: it goes again, on another connection.
	for range maxUnprocessedRetries {
		st, err := c.dialH2(ctx, t)
		if !errors.Is(err, errUnprocessed) || ctx.Err() != nil {
			return st, err
		}
	}
	return c.dialH2(ctx, t)
}

// maxUnprocessedRetries bounds how often Dial sends a CONNECT again after a GOAWAY.
const maxUnprocessedRetries = 2

// dialH2 is one CONNECT over a pooled HTTP/2 connection.
func (c *Client) dialH2(ctx context.Context, t Target) (*Stream, error) {
	cn, err := c.h2.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	// A caller whose deadline passed gets no stream, even when a pooled connection had a
	// slot at once (acquire's select could pick either way); the dial it started, if any,
	// still pools its connection for the callers after it.
	if err := ctx.Err(); err != nil {
		cn.mu.Lock()
		cn.reserved--
		cn.mu.Unlock()
		return nil, &Error{Kind: KindDial, Err: err}
	}
	st, err := cn.openStream(requestFields(t))
	if err != nil {
		return nil, err
	}
	select {
	case <-st.resp:
	case <-ctx.Done():
		st.Close()
		return nil, &Error{Kind: KindDial, Err: ctx.Err()}
	}
	if st.status != 200 {
		st.Close()
		if st.status == 0 {
			st.mu.Lock()
			cause := st.rErr
			st.mu.Unlock()
			var he *Error
			if errors.As(cause, &he) {
				return nil, he
			}
			return nil, &Error{Kind: KindDial, Err: cause}
		}
		return nil, errorForStatus(st.status, st.reason)
	}
	return st, nil
}

func (c *Client) connect(ctx context.Context, t Target) (*conn, error) {
	cert, err := c.cfg.Certificate(ctx, t.Source)
	if err != nil {
		return nil, &Error{Kind: KindIdentity, Reason: "no certificate for " + t.Source.String(), Err: err}
	}
	raw, err := c.cfg.DialContext(ctx, "tcp", t.Address.String())
	if err != nil {
		return nil, &Error{Kind: KindDial, Err: fmt.Errorf("dial %s: %w", t.Address, err)}
	}
	tc := tls.Client(newRawConn(raw), clientTLS(cert, c.cfg.Bundle, t.Identities))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		var he *Error
		if errors.As(err, &he) {
			return nil, he
		}
		if unparseableServerCert(err) {
			return nil, &Error{Kind: KindIdentity, Reason: "verify server", Err: err}
		}
		return nil, &Error{Kind: KindDial, Err: fmt.Errorf("tls handshake with %s: %w", t.Address, err)}
	}
	peer, err := peerIdentity(tc.ConnectionState())
	if err != nil {
		raw.Close()
		return nil, &Error{Kind: KindProtocol, Err: err}
	}
	cn := newConn(tc, false, c.cfg.ConnConfig, peer)
	if err := cn.handshake(); err != nil {
		raw.Close()
		// In TLS 1.3 the server judges our certificate after our handshake finished; its
		// verdict arrives as an alert on the first read.
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "remote error" {
			return nil, &Error{Kind: KindIdentity, Reason: "server refused our certificate", Err: err}
		}
		return nil, &Error{Kind: KindProtocol, Err: fmt.Errorf("http2 handshake with %s: %w", t.Address, err)}
	}
	return cn, nil
}

// pooled starts serving a connection its pool now holds.
func (c *conn) pooled(onClose func(*conn)) {
	c.onClose = onClose
	c.run()
}

func (c *conn) closeClient() { c.closeWithError(errConnClosed) }

// Conns reports how many pooled connections are open, for metrics and tests.
func (c *Client) Conns() int { return c.h2.conns() + c.h3.conns() }

// Close closes every pooled connection; open streams fail.
func (c *Client) Close() error {
	c.h2.closeAll()
	c.h3.closeAll()
	return nil
}
