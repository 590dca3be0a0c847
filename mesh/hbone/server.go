package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// Handler serves one CONNECT stream. It must answer with r.Accept (then use the stream)
// or r.Reject; the stream is closed when ServeHBONE returns. ctx ends when the connection
// or the server does.
type Handler interface {
	ServeHBONE(ctx context.Context, r *Request)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *Request)

func (f HandlerFunc) ServeHBONE(ctx context.Context, r *Request) { f(ctx, r) }

// ServerConfig configures a Server. GetCertificate, Bundle and Handler are required.
type ServerConfig struct {
	ConnConfig
	// GetCertificate returns the SVID this endpoint presents.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Bundle holds the trust anchors client certificates must chain to; a client from a
	// trust domain with no bundle is refused.
	Bundle x509bundle.Source
	// CheckAuthority is the anti-spoofing check, run on every request before Handler; an
	// error answers 400, as Istio's ztunnel does. Nil means SameAddress. A waypoint passes a check that also
	// admits the service VIPs it serves.
	CheckAuthority func(context.Context, *Request) error
	Handler        Handler
}

// Server terminates HBONE connections.
type Server struct {
	cfg ServerConfig
	tls *tls.Config

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	conns     map[*conn]struct{}
	listeners map[net.Listener]struct{}
	h3conns   map[*h3conn]struct{}
	h3lns     map[*quic.Listener]struct{}
	closing   bool
	wg        sync.WaitGroup
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.GetCertificate == nil:
		return nil, errors.New("hbone server: GetCertificate is required")
	case cfg.Bundle == nil:
		return nil, errors.New("hbone server: Bundle is required")
	case cfg.Handler == nil:
		return nil, errors.New("hbone server: Handler is required")
	}
	cc, err := cfg.ConnConfig.withDefaults(DefaultServerMaxStreams)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig = cc
	if cfg.CheckAuthority == nil {
		cfg.CheckAuthority = SameAddress
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		tls:       serverTLS(cfg.GetCertificate, cfg.Bundle),
		ctx:       ctx,
		cancel:    cancel,
		conns:     make(map[*conn]struct{}),
		listeners: make(map[net.Listener]struct{}),
		h3conns:   make(map[*h3conn]struct{}),
		h3lns:     make(map[*quic.Listener]struct{}),
	}, nil
}

// Serve accepts connections on ln until ln fails or the server shuts down; it returns nil
// after a shutdown, also one that came before it started (then it closes ln at once, as
// Shutdown closes the listeners it knows).
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("hbone accept: %w", err)
		}
		backoff = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ServeConn(nc)
		}()
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// ServeConn runs the TLS and HTTP/2 handshakes on nc and serves its streams; it returns
// when the connection ends.
func (s *Server) ServeConn(nc net.Conn) {
	log := s.cfg.Logger.With("remote", nc.RemoteAddr().String())
	tc := tls.Server(newRawConn(nc), s.tls)
	hctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		log.Info("hbone handshake refused", "err", err)
		nc.Close()
		return
	}
	peer, err := peerIdentity(tc.ConnectionState())
	if err != nil {
		log.Info("hbone handshake refused", "err", err)
		nc.Close()
		return
	}
	c := newConn(tc, true, s.cfg.ConnConfig, peer)
	if err := c.handshake(); err != nil {
		c.log.Info("hbone preface failed", "err", err)
		nc.Close()
		return
	}
	ctx, cancelConn := context.WithCancel(s.ctx)
	defer cancelConn()
	local, remote := addrPortOf(nc.LocalAddr()), addrPortOf(nc.RemoteAddr())
	c.newStream = func(st *Stream, r *Request) {
		r.Peer, r.Local, r.Remote, r.Protocol = peer, local, remote, ProtocolH2
		s.serveStream(ctx, c, st, r)
	}
	done := make(chan struct{})
	c.onClose = func(*conn) { cancelConn(); close(done) }

	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.closeWithError(errConnClosed)
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	c.run()
	<-done
	c.mu.Lock()
	cerr := c.err
	c.mu.Unlock()
	if errors.Is(cerr, errPingTimeout) {
		// A peer gone silent, or one stuck half way through a request's headers (a
		// header block cannot be interleaved with a PING answer): the keep-alive is the
		// bound on both.
		c.log.Info("hbone connection dropped", "err", cerr)
	}
	<-c.readDone // after it, no handler can start
	c.handlerWG.Wait()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) serveStream(ctx context.Context, c *conn, st *Stream, r *Request) {
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

// Shutdown stops accepting, tells every peer to open no new streams (GOAWAY), waits for
// open streams to finish until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	for ln := range s.h3lns {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	h3conns := make([]*h3conn, 0, len(s.h3conns))
	for c := range s.h3conns {
		h3conns = append(h3conns, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.shutdown(ctx.Done())
		}()
	}
	for _, c := range h3conns {
		wg.Go(func() { c.shutdown(ctx.Done()) })
	}
	wg.Wait()
	s.cancel()
	s.wg.Wait()
	return ctx.Err()
}

// Close closes listeners and connections at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.Shutdown(ctx)
	return nil
}
