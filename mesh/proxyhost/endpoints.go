package proxyhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
)

// Endpoints are a proxy's HTTP endpoints. An empty address leaves that endpoint out.
type Endpoints struct {
	// AdminAddr serves GET /config_dump (Dump as indented JSON) and Go's profiles under
	// /debug/pprof/; keep it on loopback.
	AdminAddr string
	Dump      func() any
	// MetricsAddr serves GET /metrics from Metrics.
	MetricsAddr string
	Metrics     prometheus.Gatherer
	// ReadyAddr serves GET /healthz/ready from Ready (ReadyHandler).
	ReadyAddr string
	Ready     func() error
	// ReusePort sets SO_REUSEPORT on the listeners: during ztunnel's hand-over the old and
	// the new instance listen on the same addresses.
	ReusePort bool
}

// Servers are the listening endpoints; Run serves them.
type Servers struct {
	servers []*http.Server
	lns     []net.Listener
	names   []string

	closeOnce sync.Once
	closed    chan struct{}
}

// Listen opens every endpoint's listener, or none: when one fails (an address in use), those
// opened already are closed and the error names the endpoint.
func (e Endpoints) Listen(ctx context.Context) (*Servers, error) {
	s := &Servers{closed: make(chan struct{})}
	lc := net.ListenConfig{}
	if e.ReusePort {
		lc.Control = reusePort
	}
	for _, ep := range []struct {
		name, addr string
		h          func() http.Handler
	}{
		{"admin", e.AdminAddr, func() http.Handler { return AdminHandler(e.Dump) }},
		{"metrics", e.MetricsAddr, func() http.Handler { return promhttp.HandlerFor(e.Metrics, promhttp.HandlerOpts{}) }},
		{"ready", e.ReadyAddr, func() http.Handler { return ReadyHandler(e.Ready) }},
	} {
		if ep.addr == "" {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", ep.addr)
		if err != nil {
			for _, ln := range s.lns {
				ln.Close()
			}
			return nil, fmt.Errorf("%s listener: %w", ep.name, err)
		}
		s.lns = append(s.lns, ln)
		s.names = append(s.names, ep.name)
		s.servers = append(s.servers, &http.Server{Handler: ep.h(), ReadHeaderTimeout: 10 * time.Second})
	}
	return s, nil
}

// Addr is the address the named endpoint ("admin", "metrics" or "ready") listens on; nil
// when it is left out.
func (s *Servers) Addr(name string) net.Addr {
	for i, n := range s.names {
		if n == name {
			return s.lns[i].Addr()
		}
	}
	return nil
}

// Run serves every endpoint until ctx ends or Close is called, then closes them. An endpoint
// that fails stops them all and its error is returned.
func (s *Servers) Run(ctx context.Context) error {
	errc := make(chan error, len(s.servers))
	var wg sync.WaitGroup
	for i, srv := range s.servers {
		ln := s.lns[i]
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("http %s: %w", ln.Addr(), err)
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
	case <-s.closed:
	case err = <-errc:
	}
	s.Close()
	wg.Wait()
	return err
}

// Close closes every endpoint at once, open requests included; Run returns. Closing twice is
// harmless, and so is closing Servers never run.
func (s *Servers) Close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		for i, srv := range s.servers {
			_ = srv.Close()
			_ = s.lns[i].Close() // when never served
		}
	})
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
