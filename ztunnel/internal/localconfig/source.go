package localconfig

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"time"

	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
)

// DefaultInterval is how often a Source looks at its file for changes.
const DefaultInterval = 500 * time.Millisecond

// Source feeds a state.State from a local config file and keeps it in step with the
// file. Use Load once, then Run.
type Source struct {
	Path     string
	State    *state.State
	Logger   *slog.Logger
	Interval time.Duration // DefaultInterval when zero

	sum     [sha256.Size]byte
	badSum  [sha256.Size]byte // the last bad contents reported, so each is reported once
	applied map[string][]string
}

// Load reads, validates and applies the file. At start-up its error stops ztunnel: there is
// no last good config to keep.
func (s *Source) Load() error {
	if s.Path == "" {
		return errNoFile
	}
	b, err := os.ReadFile(s.Path)
	if err != nil {
		return fmt.Errorf("local config: %w", err)
	}
	return s.apply(b)
}

func (s *Source) apply(b []byte) error {
	sum := sha256.Sum256(b)
	cfg, err := Parse(b)
	if err != nil {
		return fmt.Errorf("local config %s: %w", s.Path, err)
	}
	// The whole file has been checked: applying each type cannot fail half way.
	for _, t := range configv1.TypeURLs {
		res := cfg.Resources[t]
		if res == nil && len(s.applied[t]) == 0 {
			continue
		}
		var removals []string
		for _, name := range s.applied[t] {
			if _, ok := res[name]; !ok {
				removals = append(removals, name)
			}
		}
		if err := s.State.Apply(t, res, removals); err != nil {
			return fmt.Errorf("local config %s: %w", s.Path, err)
		}
	}
	s.State.SetMeshStrict(cfg.Strict)
	if s.applied == nil {
		s.applied = map[string][]string{}
	}
	for t, res := range cfg.Resources {
		s.applied[t] = names(res)
	}
	s.sum = sum
	s.Logger.Info("local config applied", "file", s.Path,
		"workloads", len(cfg.Resources[configv1.WorkloadTypeURL]), "services", len(cfg.Resources[configv1.ServiceTypeURL]),
		"policies", len(cfg.Resources[configv1.AuthorizationTypeURL]), "waypoints", len(cfg.Resources[configv1.WaypointTypeURL]))
	return nil
}

// Run re-reads the file every Interval until ctx ends and applies it when its contents
// changed. A file that cannot be read, parsed or validated is logged once, naming the field
// at fault, and the config applied last stays.
func (s *Source) Run(ctx context.Context) error {
	iv := s.Interval
	if iv <= 0 {
		iv = DefaultInterval
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	var readErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, err := os.ReadFile(s.Path)
		if err != nil {
			if err.Error() != readErr {
				readErr = err.Error()
				s.Logger.Warn("local config unreadable; keeping the last good config", "file", s.Path, "err", err)
			}
			continue
		}
		readErr = ""
		sum := sha256.Sum256(b)
		if sum == s.sum || sum == s.badSum {
			continue
		}
		if err := s.apply(b); err != nil {
			s.badSum = sum
			s.Logger.Error("local config rejected; keeping the last good config", "file", s.Path, "err", err)
		}
	}
}
