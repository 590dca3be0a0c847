package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStopNow, as the cause of the context given to WaitForSuccessor ending
// (context.WithCancelCause), skips the grace: the pods are drained at once.
var ErrStopNow = errors.New("stop without waiting for a successor")

// Handover is one ztunnel's part in the hand-over between instances on a node, around the
// node API's socket. At start, a ztunnel already serving the socket is the predecessor: the
// Manager's Run takes the pods over from it once the config is in, and only then this
// ztunnel serves the socket's path, so that the CNI and the lab talk to it. At shutdown it
// keeps serving until a successor takes the pods over (or the grace passes), then drains.
type Handover struct {
	pods        *Manager
	path        string
	log         *slog.Logger
	predecessor bool
	tookOver    atomic.Bool
	srv         *http.Server

	// lnc passes the node API's listener to Run, once there is one; after Run gave up
	// waiting (stopped), a listener is closed instead.
	mu      sync.Mutex
	lnc     chan net.Listener
	stopped bool
}

// NewHandover returns m's hand-over at the node API socket path, and makes m's Run take the
// pods over from the predecessor, when one serves the socket. A socket file left by a
// ztunnel that is gone is removed.
func NewHandover(m *Manager, path string, log *slog.Logger) *Handover {
	h := &Handover{
		pods: m, path: path, log: log,
		srv: &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second},
		lnc: make(chan net.Listener, 1),
	}
	h.predecessor = live(path)
	if h.predecessor {
		log.Info("another ztunnel serves the node API; taking over from it once the config is in", "node_api", path)
	}
	m.handover = h
	return h
}

// Predecessor reports whether another ztunnel served the node API at start.
func (h *Handover) Predecessor() bool { return h.predecessor }

// Ready is a readiness check: not ready while taking over from the predecessor.
func (h *Handover) Ready() error {
	if h.predecessor && !h.tookOver.Load() {
		return errors.New("taking over from the previous ztunnel")
	}
	return nil
}

// Listen takes the node API's socket path now, for Run to serve. Without a predecessor a
// ztunnel calls it before anything runs, so that a path it cannot take fails the start.
func (h *Handover) Listen() error {
	ln, err := listenUnixReplacing(h.path)
	if err != nil {
		return fmt.Errorf("node api listener: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		ln.Close()
		return nil
	}
	select {
	case h.lnc <- ln:
		return nil
	default:
		ln.Close()
		return errors.New("node api listener: listening already")
	}
}

// takeOver is the Manager's start with a predecessor: its pods, then its socket path.
func (h *Handover) takeOver(ctx context.Context) error {
	if err := h.pods.TakeOver(ctx, h.path); err != nil {
		h.log.Warn("take over from the previous ztunnel", "err", err)
	}
	// Only now the node API's path is ours: the CNI and the lab talk to us.
	if err := h.Listen(); err != nil {
		return err
	}
	h.tookOver.Store(true)
	return nil
}

// Run serves the node API once its path is taken (Listen), until Drain; it returns at once
// when ctx ends before that.
func (h *Handover) Run(ctx context.Context) error {
	var ln net.Listener
	select {
	case ln = <-h.lnc:
	case <-ctx.Done():
		h.mu.Lock()
		h.stopped = true
		select {
		case ln = <-h.lnc:
		default:
		}
		h.mu.Unlock()
		if ln != nil {
			ln.Close()
		}
		return nil
	}
	if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("node-api: %w", err)
	}
	return nil
}

// WaitForSuccessor returns once a successor has taken the pods over; or, after ctx ends
// (shutdown requested), once grace has passed without one — at once when ctx's cause is
// ErrStopNow; or when running ends (a component failed).
func (h *Handover) WaitForSuccessor(ctx, running context.Context, grace time.Duration) {
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), ErrStopNow) {
			grace = 0
		}
		h.log.Info("shutdown requested; serving until a successor takes over", "grace", grace.String())
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-h.pods.HandedOver():
			h.log.Info("a successor took over; draining")
		case <-t.C:
			h.log.Info("no successor took over; draining")
		case <-running.Done():
		}
	case <-h.pods.HandedOver():
		h.log.Info("a successor took over; draining")
	case <-running.Done():
	}
}

// Drain lets the pods' connections go on for period, then closes them (Manager.Drain), and
// stops serving the node API: Run returns.
func (h *Handover) Drain(period time.Duration) {
	dctx, cancel := context.WithTimeout(context.Background(), period)
	h.pods.Drain(dctx)
	cancel()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = h.srv.Shutdown(sctx)
	cancel()
}

// live reports whether a process serves the unix socket at path. A socket file left by a
// ztunnel that is gone is removed.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return true
	}
	if fi, serr := os.Lstat(path); serr == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
	return false
}

// listenUnixReplacing listens on a unix socket at path, replacing whatever is there in one
// step (bind beside, then rename over), so a client never finds the path missing. The file
// is never unlinked on close: by then it may be a successor's.
func listenUnixReplacing(path string) (*net.UnixListener, error) {
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}
