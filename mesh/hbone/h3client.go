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
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The client's HTTP/3 side: a pool of QUIC connections per key, beside the HTTP/2 pool,
// and a memory of addresses where QUIC did not get through.

type h3pool struct {
	conns   []*h3conn
	pending []*h3pendingDial
}

type h3pendingDial struct {
	done    chan struct{}
	c       *h3conn
	err     error
	waiters uint32
}

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
	cn, err := c.acquireH3(ctx, t)
	if err != nil {
		return nil, err
	}
	return cn.openStream(ctx, t)
}

func (c *Client) acquireH3(ctx context.Context, t Target) (*h3conn, error) {
	key := keyOf(t)
	limit := c.cfg.MaxStreams
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, &Error{Kind: KindDial, Reason: "client closed"}
		}
		p := c.h3pools[key]
		if p == nil {
			p = &h3pool{}
			c.h3pools[key] = p
		}
		for _, cn := range p.conns {
			if cn.reserve(limit) {
				c.mu.Unlock()
				return cn, nil
			}
		}
		var pd *h3pendingDial
		for _, d := range p.pending {
			if d.waiters < limit {
				pd = d
				pd.waiters++
				break
			}
		}
		if pd == nil {
			pd = &h3pendingDial{done: make(chan struct{}), waiters: 1}
			p.pending = append(p.pending, pd)
			go c.dialH3Conn(key, t, pd)
		}
		c.mu.Unlock()

		select {
		case <-pd.done:
		case <-ctx.Done():
			// As in acquire: a caller that gives up stops counting as the dial's waiter.
			c.mu.Lock()
			pd.waiters--
			c.mu.Unlock()
			return nil, &Error{Kind: KindDial, Err: ctx.Err()}
		}
		if pd.err != nil {
			return nil, pd.err
		}
		if pd.c.reserve(limit) {
			return pd.c, nil
		}
	}
}

// dialH3Conn establishes one pooled QUIC connection, detached from the callers' contexts.
func (c *Client) dialH3Conn(key poolKey, t Target, pd *h3pendingDial) {
	cn, err := c.connectH3(t)
	if err != nil {
		if _, ok := errors.AsType[*h3UnavailableError](err); ok {
			c.markH3Down(t.Address, err)
		}
	}
	c.mu.Lock()
	p := c.h3pools[key]
	if p != nil {
		p.pending = slices.DeleteFunc(p.pending, func(d *h3pendingDial) bool { return d == pd })
	}
	if err == nil {
		if c.closed || p == nil {
			err = &Error{Kind: KindDial, Reason: "client closed"}
			cn.close("client closed")
		} else {
			p.conns = append(p.conns, cn)
			cn.mu.Lock()
			cn.onClose = func(dead *h3conn) { c.forgetH3(key, dead) }
			cn.mu.Unlock()
		}
	} else if p != nil && len(p.conns) == 0 && len(p.pending) == 0 {
		delete(c.h3pools, key)
	}
	c.mu.Unlock()
	pd.c, pd.err = cn, err
	close(pd.done)
}

// closers closes several things as one.
type closers []io.Closer

func (cs closers) Close() error {
	for _, c := range cs {
		_ = c.Close()
	}
	return nil
}

func (c *Client) connectH3(t Target) (*h3conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.HandshakeTimeout)
	defer cancel()
	cert, err := c.cfg.Certificate(ctx, t.Source)
	if err != nil {
		return nil, &Error{Kind: KindIdentity, Reason: "no certificate for " + t.Source.String(), Err: err}
	}
	pc, err := c.cfg.ListenPacket(ctx, "udp", "")
	if err != nil {
		return nil, &h3UnavailableError{err: fmt.Errorf("udp socket: %w", err)}
	}
	tr := &quic.Transport{Conn: pc}
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

func (c *Client) forgetH3(key poolKey, dead *h3conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.h3pools[key]
	if p == nil {
		return
	}
	p.conns = slices.DeleteFunc(p.conns, func(cn *h3conn) bool { return cn == dead })
	if len(p.conns) == 0 && len(p.pending) == 0 {
		delete(c.h3pools, key)
	}
}

// closeH3 closes every pooled QUIC connection and waits for their goroutines.
func (c *Client) closeH3(all []*h3conn) {
	var wg sync.WaitGroup
	for _, cn := range all {
		wg.Go(func() {
			cn.close("client closed")
			cn.wg.Wait()
		})
	}
	wg.Wait()
}
