package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"ambit.dev/proto/nodeapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Echo is what the HTTP echo application answers: who it is and the caller it saw.
type Echo struct {
	Pod    string `json:"pod"`
	Method string `json:"method"`
	Path   string `json:"path"`
	// Caller is the remote address of the connection; ztunnel keeps the caller's IP.
	Caller string `json:"caller"`
	// Identity is the caller's SPIFFE ID as the pod's ztunnel verified it; empty when the
	// connection did not come through the mesh.
	Identity string `json:"identity,omitempty"`
	MTLS     bool   `json:"mtls"`
	// PeerKnown says the pod's ztunnel had a record of the connection (it delivered it);
	// false when the connection did not come through ztunnel.
	PeerKnown bool `json:"peerKnown"`
}

// Text renders e as the lines the demo prints.
func (e Echo) Text() string {
	id := "none (plaintext: the connection did not come through the mesh)"
	switch {
	case e.MTLS:
		id = e.Identity + " (mutual TLS, verified by ztunnel)"
	case e.PeerKnown:
		id = "none (plaintext from outside the mesh, let in by ztunnel: PERMISSIVE)"
	}
	return fmt.Sprintf("pod: %s\nrequest: %s %s\ncaller: %s\ncaller identity: %s\n", e.Pod, e.Method, e.Path, e.Caller, id)
}

// ServeApp runs a sample application on port until ctx ends. It runs inside the pod's
// network namespace (`ip netns exec`); nodeAPI is its ztunnel's node API, which the HTTP
// echo asks who is behind each connection.
func ServeApp(ctx context.Context, kind string, port int, pod, nodeAPI string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	log.Info("serving", "app", kind, "pod", pod, "addr", ln.Addr().String())
	switch kind {
	case "http-echo":
		srv := &http.Server{Handler: echoHandler(pod, nodeapi.NewClient(nodeAPI)), ReadHeaderTimeout: 10 * time.Second,
			ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) }}
		// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), as meshes carry both in the clear
		// inside their tunnels.
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	case "grpc":
		// gRPC's standard health service: SERVING, with the pod's name as the service
		// "ambit.lab.Pod/<namespace>/<name>" so a caller can tell which pod answered.
		gs := grpc.NewServer()
		hs := health.NewServer()
		hs.SetServingStatus("ambit.lab.Pod/"+pod, healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(gs, hs)
		go func() { <-ctx.Done(); gs.GracefulStop() }()
		return gs.Serve(ln)
	case "tcp-echo":
		go func() { <-ctx.Done(); ln.Close() }()
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
				// A plain copy: io.Copy between two TCP sockets splices through a pipe, two
				// more files per idle connection, and the app would run out of files at a
				// third of the connections the load tests hold.
				_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 2048))
			}()
		}
	default:
		ln.Close()
		return fmt.Errorf("unknown app %q (one of %s)", kind, strings.Join(AppKinds, ", "))
	}
}

type connKey struct{}

// echoHandler answers every request with an Echo, as JSON when asked
// (?format=json or Accept: application/json). /status/<code> answers with that code and
// /delay/<duration> waits first, /flaky/<percent> answers 503 to that share of requests
// (/delay and /flaky only on the pods named by ?pods=, or all): the failures the L7 tests
// need. /hits?path=<p> answers how many requests for path p the pod has served: what a
// mirror received.
func echoHandler(pod string, peers *nodeapi.Client) http.Handler {
	var hits pathCounter
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hits" {
			w.Header().Set("X-Ambit-Pod", pod)
			_, _ = io.WriteString(w, strconv.Itoa(hits.get(r.URL.Query().Get("path")))+"\n")
			return
		}
		hits.add(r.URL.Path)
		// ?pods=ns/a,ns/b limits /flaky and /delay to those pods: one bad backend among good ones.
		only := r.URL.Query().Get("pods")
		mine := only == "" || slices.Contains(strings.Split(only, ","), pod)
		e := Echo{Pod: pod, Method: r.Method, Path: r.URL.Path, Caller: r.RemoteAddr}
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			src, err1 := netip.ParseAddrPort(c.RemoteAddr().String())
			dst, err2 := netip.ParseAddrPort(c.LocalAddr().String())
			if err1 == nil && err2 == nil {
				ctx, cancel := context.WithTimeout(r.Context(), time.Second)
				p, err := peers.Peer(ctx, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()))
				cancel()
				if err == nil {
					e.Identity, e.MTLS, e.PeerKnown = p.Identity, p.MTLS, true
				}
			}
		}
		code := http.StatusOK
		if rest, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			if c, err := strconv.Atoi(rest); err == nil && c >= 200 && c <= 599 {
				code = c
			}
		}
		if rest, ok := strings.CutPrefix(r.URL.Path, "/flaky/"); ok {
			if pct, err := strconv.Atoi(rest); err == nil && mine && rand.IntN(100) < pct {
				code = http.StatusServiceUnavailable
			}
		}
		if rest, ok := strings.CutPrefix(r.URL.Path, "/delay/"); ok && mine {
			if d, err := time.ParseDuration(rest); err == nil && d <= time.Minute {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
			}
		}
		w.Header().Set("X-Ambit-Pod", pod)
		if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(e)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, e.Text())
	})
}

// pathCounter counts requests by path, up to maxPaths distinct paths (a lab pod lives for
// one lab; the bound keeps a stray scan from growing it without end).
type pathCounter struct {
	mu sync.Mutex
	n  map[string]int
}

const maxPaths = 10000

func (c *pathCounter) add(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	if _, ok := c.n[path]; ok || len(c.n) < maxPaths {
		c.n[path]++
	}
}

func (c *pathCounter) get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[path]
}

// Client returns an HTTP client whose connections start inside the network namespace at
// netns: requests leave from that pod, through its ztunnel when it is captured.
func Client(netns string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				d := timeout
				if dl, ok := ctx.Deadline(); ok {
					d = time.Until(dl)
				}
				return DialIn(netns, addr, d)
			},
			DisableKeepAlives: true,
		},
	}
}
