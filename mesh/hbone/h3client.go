package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The client's HTTP/3 side: QUIC connections for the client's HTTP/3 pool, and a memory of
// addresses where QUIC did not get through.

// errH3Unavailable marks a failure that says "this peer cannot be reached over QUIC right
// now" (no handshake in time, UDP refused): the client then uses HTTP/2.
type h3UnavailableError struct{ err error }

func (e *h3UnavailableError) Error() string { return "http3 unavailable: " + e.err.Error() }
func (e *h3UnavailableError) Unwrap() error { return e.err }

// h3Usable reports whether t.Address has not recently failed a QUIC handshake.
func (c *Client) h3Usable(addr netip.AddrPort) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.h3down[addr]
	if !ok {
		return true
	}
	if time.Now().After(until) {
		delete(c.h3down, addr)
		return true
	}
	return false
}

func (c *Client) markH3Down(addr netip.AddrPort, err error) {
	c.mu.Lock()
	if c.h3down == nil {
		c.h3down = map[netip.AddrPort]time.Time{}
	}
	c.h3down[addr] = time.Now().Add(c.cfg.H3FallbackPeriod)
	c.mu.Unlock()
	c.cfg.Logger.Info("hbone falling back to HTTP/2", "address", addr.String(), "for", c.cfg.H3FallbackPeriod.String(), "err", err.Error())
}

// FallbackH2 reports whether the client currently uses HTTP/2 for addr although HTTP/3
// was asked for, because a QUIC handshake to it failed (for /config_dump and tests).
func (c *Client) FallbackH2(addr netip.AddrPort) bool { return !c.h3Usable(addr) }

// FallbacksH2 returns every address the client currently reaches over HTTP/2 although
// HTTP/3 was asked for, with when it tries QUIC again.
func (c *Client) FallbacksH2() map[netip.AddrPort]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	out := make(map[netip.AddrPort]time.Time, len(c.h3down))
	for a, until := range c.h3down {
		if now.Before(until) {
			out[a] = until
		}
	}
	return out
}

// dialH3 opens a stream over HTTP/3. A *h3UnavailableError means "use HTTP/2".
func (c *Client) dialH3(ctx context.Context, t Target) (*Stream, error) {
	cn, err := c.h3.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	return cn.openStream(ctx, t)
}

// dialH3Conn establishes one QUIC connection for the pool. A failure that says the peer
// cannot be reached over QUIC sends t.Address to HTTP/2 for H3FallbackPeriod.
func (c *Client) dialH3Conn(ctx context.Context, t Target) (*h3conn, error) {
	cn, err := c.connectH3(ctx, t)
	if _, ok := errors.AsType[*h3UnavailableError](err); ok {
		c.markH3Down(t.Address, err)
	}
	return cn, err
}

// closers closes several things as one.
type closers []io.Closer

func (cs closers) Close() error {
	for _, c := range cs {
		_ = c.Close()
	}
	return nil
}

func (c *Client) connectH3(ctx context.Context, t Target) (*h3conn, error) {
	cert, err := c.cfg.Certificate(ctx, t.Source)
	if err != nil {
		return nil, &Error{Kind: KindIdentity, Reason: "no certificate for " + t.Source.String(), Err: err}
	}
	pc, err := c.cfg.ListenPacket(ctx, "udp", "")
	if err != nil {
		return nil, &h3UnavailableError{err: fmt.Errorf("udp socket: %w", err)}
	}
	conn, shield := shieldPacketConn(pc)
	tr := &quic.Transport{Conn: conn}
	release := closers{tr, pc}

	tc := clientTLS(cert, c.cfg.Bundle, t.Identities)
	tc.NextProtos = []string{alpnH3}
	var verifyErr error
	verify := tc.VerifyPeerCertificate
	tc.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		verifyErr = verify(raw, chains)
		return verifyErr
	}
	hctx, hcancel := context.WithTimeout(ctx, c.cfg.H3HandshakeTimeout)
	defer hcancel()
	qc, err := tr.Dial(hctx, net.UDPAddrFromAddrPort(t.Address), tc, quicConfig(c.cfg.ConnConfig, -1))
	if err != nil {
		release.Close()
		if verifyErr != nil {
			return nil, verifyErr
		}
		return nil, classifyH3DialErr(t.Address, err)
	}
	peer, err := peerIdentityH3(qc.ConnectionState().TLS)
	if err != nil {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(h3GeneralProtocolError), "identity")
		release.Close()
		return nil, &Error{Kind: KindProtocol, Err: err}
	}
	cn := newH3Conn(qc, false, c.cfg.ConnConfig, peer)
	cn.closer = release
	cn.shield = shield
	if err := cn.start(); err != nil {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(h3InternalError), "")
		release.Close()
		return nil, classifyH3DialErr(t.Address, err)
	}
	// As over HTTP/2, the connection is ready once the server's SETTINGS arrived. In TLS
	// 1.3 the server judges our certificate after our handshake finished; a refusal
	// arrives instead as the connection's close.
	select {
	case <-cn.settings:
		return cn, nil
	case <-qc.Context().Done():
		err = context.Cause(qc.Context())
	case <-hctx.Done():
		err = hctx.Err()
	}
	_ = qc.CloseWithError(quic.ApplicationErrorCode(h3NoError), "")
	cn.wg.Wait()
	return nil, classifyH3DialErr(t.Address, err)
}

// classifyH3DialErr sorts a failed QUIC connection attempt: the server refusing our
// certificate is an identity failure; no handshake in time or an unreachable port means
// HTTP/3 is unavailable there; the rest are dial failures.
func classifyH3DialErr(addr netip.AddrPort, err error) error {
	if unparseableServerCert(err) {
		return &Error{Kind: KindIdentity, Reason: "verify server", Err: err}
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode.IsCryptoError() {
		// TLS alert 120 (no_application_protocol): the peer does not speak h3.
		if te.ErrorCode == 0x100+120 {
			return &h3UnavailableError{err: err}
		}
		return &Error{Kind: KindIdentity, Reason: "server refused our certificate", Err: err}
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return &h3UnavailableError{err: err}
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return &h3UnavailableError{err: err}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &h3UnavailableError{err: fmt.Errorf("no QUIC handshake with %s in time: %w", addr, err)}
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return &h3UnavailableError{err: err}
	}
	return &Error{Kind: KindDial, Err: fmt.Errorf("http3 connect %s: %w", addr, err)}
}

// peerIdentityH3 is peerIdentity for an HTTP/3 handshake.
func peerIdentityH3(cs tls.ConnectionState) (id spiffeid.ID, err error) {
	if cs.NegotiatedProtocol != alpnH3 {
		return id, fmt.Errorf("peer did not negotiate ALPN %q (got %q)", alpnH3, cs.NegotiatedProtocol)
	}
	cs.NegotiatedProtocol = alpnH2
	return peerIdentity(cs)
}

// pooled registers the pool's onClose; the connection already serves since connectH3.
func (c *h3conn) pooled(onClose func(*h3conn)) {
	c.mu.Lock()
	c.onClose = onClose
	c.mu.Unlock()
}

// closeClient closes the connection and waits for its goroutines.
func (c *h3conn) closeClient() {
	c.close("client closed")
	c.wg.Wait()
}
