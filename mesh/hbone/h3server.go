package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// The server's HTTP/3 side: ServeH3 runs a QUIC listener on a UDP socket beside Serve's
// TCP listener; both hand streams to the same Handler after the same checks.

// handshakeKey carries a connection's "still counted as an unverified handshake" flag
// from ConnContext to Accept.
type handshakeKey struct{}

// ServeH3 serves HBONE over HTTP/3 on pc (UDP, normally port 15008 of the same address as
// the TCP listener) until pc fails or the server shuts down. pc is closed on return.
func (s *Server) ServeH3(pc net.PacketConn) error {
	var inFlight atomic.Int64
	limit := int64(s.cfg.MaxUnverifiedHandshakes)
	conn, shield := shieldPacketConn(pc)
	tr := &quic.Transport{
		Conn: conn,
		// Under a flood of Initials (spoofed sources cost the sender nothing) each would
		// get connection state until the handshake times out. Past the bound, a new client
		// must first echo a Retry token, which a spoofed source never receives.
		VerifySourceAddress: func(net.Addr) bool { return inFlight.Load() >= limit },
		ConnContext: func(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
			counted := &atomic.Bool{}
			counted.Store(true)
			inFlight.Add(1)
			context.AfterFunc(ctx, func() {
				if counted.Swap(false) {
					inFlight.Add(-1)
				}
			})
			return context.WithValue(ctx, handshakeKey{}, counted), nil
		},
	}
	tc := serverTLS(s.cfg.GetCertificate, s.cfg.Bundle)
	tc.NextProtos = []string{alpnH3}
	ln, err := tr.Listen(tc, quicConfig(s.cfg.ConnConfig, int64(s.cfg.MaxStreams)))
	if err != nil {
		pc.Close()
		return fmt.Errorf("hbone http3 listen: %w", err)
	}
	s.mu.Lock()
	if s.closing { // shut down before it started: as after a shutdown, nil
		s.mu.Unlock()
		ln.Close()
		tr.Close()
		pc.Close()
		return nil
	}
	s.h3lns[ln] = struct{}{}
	s.mu.Unlock()
	// The connections live on tr: it closes only after they have ended (Shutdown drains
	// them once the listener is closed).
	var conns sync.WaitGroup
	defer func() {
		s.mu.Lock()
		delete(s.h3lns, ln)
		s.mu.Unlock()
		ln.Close()
		conns.Wait()
		tr.Close()
		pc.Close()
	}()
	for {
		qc, err := ln.Accept(s.ctx)
		if err != nil {
			if s.isClosing() || s.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("hbone http3 accept: %w", err)
		}
		if counted, ok := qc.Context().Value(handshakeKey{}).(*atomic.Bool); ok && counted.Swap(false) {
			inFlight.Add(-1)
		}
		s.wg.Add(1)
		conns.Add(1)
		go func() {
			defer s.wg.Done()
			defer conns.Done()
			s.serveH3Conn(qc, shield)
		}()
	}
}

// serveH3Conn serves one QUIC connection's request streams; it returns when the
// connection has ended and its handlers have returned.
func (s *Server) serveH3Conn(qc *quic.Conn, shield *shieldConn) {
	log := s.cfg.Logger.With("remote", qc.RemoteAddr().String(), "proto", ProtocolH3.String())
	peer, err := peerIdentityH3(qc.ConnectionState().TLS)
	if err != nil {
		log.Info("hbone handshake refused", "err", err)
		_ = qc.CloseWithError(quic.ApplicationErrorCode(h3GeneralProtocolError), "identity")
		return
	}
	c := newH3Conn(qc, true, s.cfg.ConnConfig, peer)
	c.shield = shield
	if err := c.start(); err != nil {
		c.log.Info("hbone http3 setup failed", "err", err)
		_ = qc.CloseWithError(quic.ApplicationErrorCode(h3InternalError), "")
		c.wg.Wait()
		return
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.close("server closing")
		c.wg.Wait()
		return
	}
	s.h3conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.h3conns, c)
		s.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(s.ctx)
	context.AfterFunc(qc.Context(), cancel)
	local, remote := addrPortOf(qc.LocalAddr()), addrPortOf(qc.RemoteAddr())
	var handlers sync.WaitGroup
	for {
		qs, err := qc.AcceptStream(context.Background())
		if err != nil {
			break
		}
		c.mu.Lock()
		c.nextStream = uint64(qs.StreamID()) + 4
		refuse := c.goingAway || c.active >= s.cfg.MaxStreams
		if !refuse {
			c.active++
			c.idle.Stop()
		}
		c.mu.Unlock()
		if refuse {
			qs.CancelRead(quic.StreamErrorCode(h3RequestRejected))
			qs.CancelWrite(quic.StreamErrorCode(h3RequestRejected))
			continue
		}
		handlers.Go(func() {
			hs := newH3Stream(c, qs)
			st := &Stream{q: hs}
			r, ok := s.readH3Request(c, hs)
			if !ok {
				return
			}
			r.stream, r.Peer, r.Local, r.Remote, r.Protocol = st, peer, local, remote, ProtocolH3
			s.serveH3Stream(ctx, c, st, r)
		})
	}
	cancel()
	handlers.Wait()
	c.wg.Wait()
}

// readH3Request reads and checks a stream's CONNECT request within the handshake timeout
// (a client that opens a stream and sends nothing does not hold a handler for long). A
// malformed request is answered 400; a connection error closes the connection.
func (s *Server) readH3Request(c *h3conn, hs *h3stream) (*Request, bool) {
	_ = hs.qs.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	r, err := readH3Request(&hs.br, s.cfg.MaxHeaderListSize)
	_ = hs.qs.SetReadDeadline(time.Time{})
	if err == nil {
		return r, true
	}
	var he *h3Error
	switch {
	case errors.As(err, &he):
		c.fail(he)
		hs.abort(he.code)
		hs.Close()
	case errors.Is(err, errHeaderTooLarge):
		hs.qs.CancelRead(quic.StreamErrorCode(h3ExcessiveLoad))
		hs.rEOF.Store(true)
		_ = hs.respond(400, err.Error())
		hs.Close()
	case isStreamAbort(err):
		// The peer gave up before its request was complete: count it like an HTTP/2
		// RST_STREAM (rapid reset).
		hs.Close()
		if c.countReset(s.cfg.MaxResets, s.cfg.ResetWindow) {
			c.fail(&h3Error{code: h3ExcessiveLoad, msg: "too many abandoned streams"})
		}
	default:
		c.log.Info("hbone request refused", "reason", err.Error())
		_ = hs.respond(400, err.Error())
		hs.Close()
	}
	return nil, false
}

func isStreamAbort(err error) bool {
	_, ok := errors.AsType[*quic.StreamError](err)
	if ok {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// countReset records an abandoned stream and reports whether the peer is over the limit.
func (c *h3conn) countReset(max int, window time.Duration) bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	cut := 0
	for cut < len(c.resets) && now.Sub(c.resets[cut]) > window {
		cut++
	}
	c.resets = append(c.resets[cut:], now)
	return len(c.resets) > max
}

func (s *Server) serveH3Stream(ctx context.Context, c *h3conn, st *Stream, r *Request) {
	defer st.Close()
	if err := s.cfg.CheckAuthority(ctx, r); err != nil {
		c.log.Info("hbone request refused", "authority", r.Authority.String(), "reason", err.Error())
		_ = r.Reject(400, err.Error())
		return
	}
	s.cfg.Handler.ServeHBONE(ctx, r)
	if !r.responded {
		_ = r.Reject(503, "handler did not answer")
	}
}
