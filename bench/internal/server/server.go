// Package server is the benchmark's own application, run inside the server pod: an HTTP/1.1
// server that answers every request with a fixed-size body, and a TCP source that streams
// bytes to whoever connects, for the bulk-throughput test, and a TCP echo for the idle-tunnel
// sweep, which holds connections open and proves each by a byte echoed. The lab's sample http-echo is not
// used because it asks its ztunnel who each caller is, which would charge the proxy with
// work the benchmark does not mean to measure.
package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Config says what to serve.
type Config struct {
	// HTTPAddr serves fixed-size replies; BulkAddr streams zeros until the peer closes.
	HTTPAddr string
	BulkAddr string
	// EchoAddr echoes what it reads on each connection; empty: not served.
	EchoAddr string
	// Size is the body of every HTTP reply in bytes.
	Size int
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	hl, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	bl, err := net.Listen("tcp", cfg.BulkAddr)
	if err != nil {
		hl.Close()
		return err
	}
	var el net.Listener
	echo := "none"
	if cfg.EchoAddr != "" {
		if el, err = net.Listen("tcp", cfg.EchoAddr); err != nil {
			hl.Close()
			bl.Close()
			return err
		}
		echo = el.Addr().String()
	}
	log.Info("serving", "http", hl.Addr().String(), "bulk", bl.Addr().String(), "echo", echo, "size", cfg.Size)
	srv := &http.Server{Handler: Handler(cfg.Size), ReadHeaderTimeout: 10 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	if el != nil {
		g.Go(func() error { return ServeEcho(ctx, el) })
	}
	g.Go(func() error {
		if err := srv.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return serveBulk(ctx, bl) })
	g.Go(func() error {
		<-ctx.Done()
		bl.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return g.Wait()
}

// Handler answers every request with size bytes of text after reading its body.
func Handler(size int) http.Handler {
	body := bytes.Repeat([]byte("a"), size)
	length := strconv.Itoa(size)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", length)
		_, _ = w.Write(body)
	})
}

func serveBulk(ctx context.Context, ln net.Listener) error {
	buf := make([]byte, 256<<10)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// ServeEcho echoes every connection ln accepts until ctx ends, then closes ln and every
// connection and returns once their goroutines have.
func ServeEcho(ctx context.Context, ln net.Listener) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	closeAll := func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	}
	stop := context.AfterFunc(ctx, closeAll)
	defer func() {
		stop()
		closeAll() // also when Accept failed on its own
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			// A plain loop with a small buffer: the sweep holds thousands of these, and
			// io.Copy would splice through a pipe, two more files per connection.
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
}
