package proxyhost

import (
	"errors"
	"sync"
	"sync/atomic"

	"ambit.dev/mesh/xdsclient"
	"google.golang.org/protobuf/proto"
)

// errNotSynced is the readiness of a proxy whose config is not complete yet.
var errNotSynced = errors.New("config not received from the controller yet")

// SyncTracker tells when a proxy's config is complete: once every xDS type it subscribes to
// has arrived and been applied at least once. A proxy is not ready before, and ztunnel
// restores no pod before (they would come back without their identity). It is safe for
// concurrent use.
type SyncTracker struct {
	mu      sync.Mutex
	pending map[string]bool
	synced  atomic.Bool
}

// NewSyncTracker waits for typeURLs.
func NewSyncTracker(typeURLs []string) *SyncTracker {
	s := &SyncTracker{pending: make(map[string]bool, len(typeURLs))}
	for _, t := range typeURLs {
		s.pending[t] = true
	}
	return s
}

// Arrived records that typeURL's resources were applied.
func (s *SyncTracker) Arrived(typeURL string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, typeURL)
	if len(s.pending) == 0 {
		s.synced.Store(true)
	}
}

// MarkSynced says the config is complete whatever arrived: a config loaded whole, from a file.
func (s *SyncTracker) MarkSynced() { s.synced.Store(true) }

// Synced reports whether the config is complete.
func (s *SyncTracker) Synced() bool { return s.synced.Load() }

// Ready is a readiness check (ReadyHandler): nil once synced.
func (s *SyncTracker) Ready() error {
	if !s.Synced() {
		return errNotSynced
	}
	return nil
}

// ApplyFunc applies one xDS update of a type: the decoded upserts by name, and the names
// removed.
type ApplyFunc func(typeURL string, upserts map[string]proto.Message, removals []string) error

// Handler is the xDS client's handler: it applies every update with apply and counts the
// type as arrived once apply succeeds. A rejected update leaves its type pending.
func (s *SyncTracker) Handler(apply ApplyFunc) xdsclient.Handler {
	return xdsclient.HandlerFunc(func(typeURL string, upserts map[string]xdsclient.Resource, removals []string) error {
		msgs := make(map[string]proto.Message, len(upserts))
		for k, r := range upserts {
			msgs[k] = r.Message
		}
		if err := apply(typeURL, msgs, removals); err != nil {
			return err
		}
		s.Arrived(typeURL)
		return nil
	})
}
