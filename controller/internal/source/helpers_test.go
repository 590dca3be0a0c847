package source

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"ambit.dev/controller/internal/model"
)

// logBuf is a goroutine-safe log sink for assertions on logged errors.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func newTestStore(t *testing.T) (*Store, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return NewStore(model.NewIndex(model.Options{}), log, StoreOptions{}), lb
}

// runStore runs s until the test ends and waits for Run to return.
func runStore(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("store run: %v", err)
		}
	})
}

// synced is a wait.Until condition: the store has synced.
func synced(s *Store) func() error {
	return func() error {
		if !s.Synced() {
			return errors.New("not synced")
		}
		return nil
	}
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func slogFrom(lb *logBuf) *slog.Logger {
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func splitLines(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }
