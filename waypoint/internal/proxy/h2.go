package proxy

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"

	"ambit.dev/mesh/hbone"
)

// serveH2 serves HTTP/2 with prior knowledge (h2c) on c: gRPC and any HTTP/2 client. Every
// stream goes through the same pipeline as an HTTP/1 request, and upstream over HTTP/2, so
// that trailers (grpc-status) and full-duplex streaming survive.
func (p *Proxy) serveH2(ctx context.Context, d *downstream, c hbone.HalfCloser) {
	ln := newConnListener(newH2FloodConn(c)) // bounds PING, SETTINGS and empty-DATA floods
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.serveH2Request(w, r, d)
		}),
		Protocols:      new(http.Protocols),
		MaxHeaderBytes: p.cfg.MaxHeaderBytes,
		IdleTimeout:    p.cfg.IdleTimeout,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          250,
			MaxReceiveBufferPerStream:     1 << 20,
			MaxReceiveBufferPerConnection: 4 << 20,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				ln.Close()
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	srv.Protocols.SetUnencryptedHTTP2(true)
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	_ = srv.Serve(ln)
	<-ln.done
}

// connListener hands one connection to an http.Server and then waits until it is closed.
type connListener struct {
	c      net.Conn
	taken  chan struct{}
	done   chan struct{}
	closer sync.Once
}

func newConnListener(c net.Conn) *connListener {
	l := &connListener{c: c, taken: make(chan struct{}, 1), done: make(chan struct{})}
	l.taken <- struct{}{}
	return l
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case <-l.taken:
		return l.c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.c.LocalAddr() }

func (p *Proxy) serveH2Request(w http.ResponseWriter, r *http.Request, d *downstream) {
	resp, ex := p.handle(r.Context(), d, r, true)
	defer resp.Body.Close()
	h := w.Header()
	// A gRPC "trailers-only" answer carries grpc-status in its only HEADERS frame. Once
	// the headers are flushed ahead of the body, that frame is no longer the last, so the
	// status moves to the trailers, where every gRPC client reads it.
	var grpcTrailers http.Header
	for k, vv := range resp.Header {
		if k == "Grpc-Status" || k == "Grpc-Message" || k == "Grpc-Status-Details-Bin" {
			if grpcTrailers == nil {
				grpcTrailers = http.Header{}
			}
			grpcTrailers[k] = vv
			continue
		}
		h[k] = vv
	}
	// Trailers the upstream announced are declared before the headers go out; those it
	// sends unannounced (gRPC's) are added with the TrailerPrefix after the body.
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	h.Del("Content-Length")
	if resp.ContentLength >= 0 && len(resp.Trailer) == 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	var (
		n   int64
		err error
	)
	buf := make([]byte, 32<<10)
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				err = werr
				break
			}
			n += int64(m)
			_ = rc.Flush()
		}
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			break
		}
	}
	for _, t := range []http.Header{grpcTrailers, resp.Trailer} {
		for k, vv := range t {
			for _, v := range vv {
				h.Add(http.TrailerPrefix+k, v)
			}
		}
	}
	ex.finish(n, err)
	if err != nil && r.Context().Err() == nil {
		// The upstream broke off mid-body: reset the stream so the client sees a failure,
		// not a truncated success.
		panic(http.ErrAbortHandler)
	}
}
