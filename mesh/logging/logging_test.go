package logging

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
)

// syncBuffer is a bytes.Buffer safe for the flush timer's goroutine, counting writes.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *syncBuffer) state() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.writes
}

func TestInfoLinesAreBatched(t *testing.T) {
	var out syncBuffer
	log, flush := New(&out, slog.LevelInfo, true)
	for i := range 100 {
		log.Info("request", "n", i)
	}
	log.Debug("below the level")
	if s, w := out.state(); w != 0 || s != "" {
		t.Fatalf("100 INFO lines went out at once in %d writes; want them held", w)
	}
	wait.Until(t, 5*time.Second, "the 100 lines written", func() error {
		if s, _ := out.state(); strings.Count(s, "\n") != 100 {
			return fmt.Errorf("%d lines written (flush interval %v)", strings.Count(s, "\n"), FlushInterval)
		}
		return nil
	})
	s, w := out.state()
	if w != 1 {
		t.Fatalf("100 lines in %d writes, want 1", w)
	}
	for i, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var rec struct{ N int }
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.N != i {
			t.Fatalf("line %d: %q (%v): lines lost, cut or out of order", i, line, err)
		}
	}
	if err := flush(); err != nil {
		t.Fatal(err)
	}
}

func TestWarnFlushesAtOnce(t *testing.T) {
	var out syncBuffer
	log, _ := New(&out, slog.LevelInfo, false)
	log.With("component", "x").Info("before")
	log.With("component", "x").Warn("trouble")
	s, w := out.state()
	if w != 1 || !strings.Contains(s, "before") || !strings.Contains(s, "trouble") || !strings.Contains(s, "component=x") {
		t.Fatalf("after a WARN: %d writes of %q; want the INFO line and the WARN line out together", w, s)
	}
}

func TestFlushAndLongLines(t *testing.T) {
	var out syncBuffer
	w := NewWriter(&out, time.Hour)
	if _, err := w.Write([]byte("short\n")); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", bufSize+10) + "\n"
	if _, err := w.Write([]byte(long)); err != nil {
		t.Fatal(err)
	}
	if s, _ := out.state(); s != "short\n"+long {
		t.Fatalf("a line longer than the buffer: written %d bytes, want the short line then the long one", len(s))
	}
	if _, err := w.Write([]byte("tail\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if s, _ := out.state(); !strings.HasSuffix(s, long+"tail\n") {
		t.Fatal("Flush did not write the buffered line")
	}
}
