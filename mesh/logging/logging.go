// Package logging gives the proxies a slog logger whose output is batched: a proxy that
// writes an access log line per request or connection would otherwise spend a write system
// call on each (a tenth of the waypoint's CPU at 1,000 req/s). Lines gather in a buffer that
// goes out when it fills, at the latest FlushInterval after its first line, at once for a
// record of level WARN or above, and on Flush when the process ends. A crash can lose at most
// the last FlushInterval of INFO and DEBUG lines; the Go runtime writes a panic to stderr
// itself, unbuffered.
package logging

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

const (
	// FlushInterval bounds how long a line waits in the buffer.
	FlushInterval = 100 * time.Millisecond
	bufSize       = 64 << 10
)

// Writer batches whole writes (slog writes one record per Write) into w.
type Writer struct {
	w     io.Writer
	every time.Duration

	mu    sync.Mutex
	buf   []byte
	armed bool
	err   error
}

// NewWriter returns a Writer into w that flushes at most every interval after a write.
func NewWriter(w io.Writer, interval time.Duration) *Writer {
	return &Writer{w: w, every: interval, buf: make([]byte, 0, bufSize)}
}

func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > cap(b.buf) {
		b.flushLocked()
	}
	if len(p) > cap(b.buf) {
		if _, err := b.w.Write(p); err != nil {
			b.err = err
		}
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	if !b.armed {
		b.armed = true
		time.AfterFunc(b.every, func() { _ = b.Flush() })
	}
	return len(p), nil
}

// Flush writes out what is buffered and returns the first write error seen so far.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	return b.err
}

func (b *Writer) flushLocked() {
	b.armed = false
	if len(b.buf) == 0 {
		return
	}
	if _, err := b.w.Write(b.buf); err != nil && b.err == nil {
		b.err = err
	}
	b.buf = b.buf[:0]
}

// New returns a logger writing JSON (or text) records at level and above to w through a
// Writer, and the function that flushes it: call it before the process exits.
func New(w io.Writer, level slog.Leveler, json bool) (*slog.Logger, func() error) {
	bw := NewWriter(w, FlushInterval)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(bw, opts)
	if json {
		h = slog.NewJSONHandler(bw, opts)
	}
	return slog.New(&flushOnWarn{Handler: h, w: bw}), bw.Flush
}

// flushOnWarn sends a record of level WARN or above out at once, with what came before it.
type flushOnWarn struct {
	slog.Handler
	w *Writer
}

func (h *flushOnWarn) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		if ferr := h.w.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

func (h *flushOnWarn) WithAttrs(as []slog.Attr) slog.Handler {
	return &flushOnWarn{Handler: h.Handler.WithAttrs(as), w: h.w}
}

func (h *flushOnWarn) WithGroup(name string) slog.Handler {
	return &flushOnWarn{Handler: h.Handler.WithGroup(name), w: h.w}
}
