package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

	"ambit.dev/controller/internal/model"
)

// StoreOptions configure a Store; zero fields take the defaults.
type StoreOptions struct {
	// Debounce is the quiet time after the last change before a commit; default 20ms.
	Debounce time.Duration
	// MaxDelay bounds how long a stream of changes can postpone a commit; default 100ms.
	MaxDelay time.Duration
}

// Store is the object cache that the sources feed. It keeps the model Index current and
// tells subscribers when the resources changed.
type Store struct {
	log  *slog.Logger
	idx  *model.Index
	opts StoreOptions

	kick    chan struct{}
	syncReq atomic.Bool
	synced  atomic.Bool

	mu      sync.Mutex
	subs    []chan struct{}
	commits []chan struct{}   // told after every commit, changes or not
	logged  map[string]string // object → last error logged, so a resync does not repeat it
	refused map[string]string // what did not decode (object or file) → its error
	// gens are the generations of the Kubernetes objects as the model last read them, so
	// that a verdict is written into the status of that generation only.
	gens map[string]int64
}

// AnalysisPath is where the controller serves Problems, as JSON, on its metrics port.
const AnalysisPath = "/debug/analysis"

// Problem is one input the controller refuses while it keeps the last good version in force:
// an object that fails validation (its field named), or a file or Kubernetes object that does
// not even decode. `ambitctl analyze` lists them (GET /debug/analysis).
type Problem struct {
	// Object is "Kind namespace/name", or a config file's path.
	Object string `json:"object"`
	// Field is the JSON path of the bad field, when known.
	Field string `json:"field,omitempty"`
	Error string `json:"error"`
	// Partial: the object is in force but for Field (an Istio AuthorizationPolicy's rule
	// that fails closed), rather than refused.
	Partial bool `json:"partial,omitempty"`
	// Unresolved: Field is a reference to something that does not exist (a VirtualService's
	// subset that no DestinationRule defines); the status writer reports it as ResolvedRefs.
	Unresolved bool `json:"unresolved,omitempty"`
}

// NewStore returns a Store that maintains idx.
func NewStore(idx *model.Index, log *slog.Logger, opts StoreOptions) *Store {
	if opts.Debounce <= 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = max(100*time.Millisecond, opts.Debounce)
	}
	return &Store{log: log, idx: idx, opts: opts, kick: make(chan struct{}, 1), logged: map[string]string{}, refused: map[string]string{},
		gens: map[string]int64{}}
}

// Index returns the model the store maintains.
func (s *Store) Index() *model.Index { return s.idx }

// Upsert records a new or changed object. An invalid object is logged and refused; its last
// good version stays in force.
func (s *Store) Upsert(obj runtime.Object) {
	s.report(obj, s.idx.Upsert(obj))
	s.poke()
}

// Delete records that obj is gone.
func (s *Store) Delete(obj runtime.Object) {
	s.report(obj, s.idx.Delete(obj))
	s.poke()
}

func objectName(obj runtime.Object) string {
	// Informers deliver objects without TypeMeta: name the kind from the Go type.
	kind := fmt.Sprintf("%T", obj)
	if i := strings.LastIndexByte(kind, '.'); i >= 0 {
		kind = kind[i+1:]
	}
	if gvk := obj.GetObjectKind().GroupVersionKind(); gvk.Kind != "" {
		kind = gvk.Kind
		if strings.HasSuffix(gvk.Group, ".istio.io") {
			kind = gvk.GroupKind().String() // apart from ambit's kinds of the same name
		}
	}
	if m, err := meta.Accessor(obj); err == nil {
		return kind + " " + m.GetNamespace() + "/" + m.GetName()
	}
	return kind
}

func (s *Store) report(obj runtime.Object, err error) {
	k := objectName(obj)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.logged, k)
		return
	}
	if s.logged[k] == err.Error() {
		return
	}
	s.logged[k] = err.Error()
	s.log.Error("invalid object, keeping its last good version", "object", k, "error", err)
}

// Refused records, and logs once, that key (an object, "Kind namespace/name", or a file)
// could not be decoded; what was last read from it stays in force.
func (s *Store) Refused(key string, err error) {
	defer s.poke() // a commit tells SubscribeCommits' subscribers of the new problem
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused[key] = err.Error()
	if s.logged[key] == err.Error() {
		return
	}
	s.logged[key] = err.Error()
	s.log.Error("invalid object, keeping its last good version", "object", key, "error", err)
}

// seen records that the model read generation gen of the Kubernetes object key, or with
// gen < 0, that the object is gone.
// A new generation pokes the store: the commit that follows (with the object's own, at once)
// comes after it, and tells the status writer.
func (s *Store) seen(key string, gen int64) {
	s.mu.Lock()
	old, ok := s.gens[key]
	if gen < 0 {
		delete(s.gens, key)
	} else {
		s.gens[key] = gen
	}
	s.mu.Unlock()
	if gen != old || !ok {
		s.poke()
	}
}

// Generations are the generations of the Kubernetes objects the model last read (decoded
// or refused), by object ("Kind namespace/name", as in Problems). Problems read after
// Generations are of those generations or later ones.
func (s *Store) Generations() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.gens)
}

// Decoded forgets a decoding problem of key: it was read again, or it is gone.
func (s *Store) Decoded(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.refused[key]; ok {
		delete(s.refused, key)
		delete(s.logged, key)
	}
}

// Problems lists what the controller refuses now, sorted by object: decoding problems, the
// model's validation errors, and the parts of objects in force that it does not apply.
func (s *Store) Problems() []Problem {
	out := []Problem{}
	s.mu.Lock()
	for k, msg := range s.refused {
		out = append(out, Problem{Object: k, Error: msg})
	}
	s.mu.Unlock()
	for _, err := range append(s.idx.Errors(), s.idx.Partial()...) {
		var oe *model.ObjectError
		if errors.As(err, &oe) {
			out = append(out, Problem{Object: oe.Kind + " " + oe.Namespace + "/" + oe.Name, Field: oe.Field, Error: oe.Err.Error(), Partial: oe.Partial,
				Unresolved: oe.Unresolved})
			continue
		}
		out = append(out, Problem{Error: err.Error()})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Object != out[j].Object {
			return out[i].Object < out[j].Object
		}
		return out[i].Error < out[j].Error
	})
	return out
}

// logCommitError logs an error the model found while committing (a VirtualService's subset
// that no DestinationRule defines), once per object and message.
func (s *Store) logCommitError(err error) {
	k := err.Error()
	var oe *model.ObjectError
	if errors.As(err, &oe) {
		k = oe.Kind + " " + oe.Namespace + "/" + oe.Name
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logged[k] == err.Error() {
		return
	}
	s.logged[k] = err.Error()
	s.log.Error("invalid object, keeping its last good version", "object", k, "error", err)
}

// Changed records that the index changed other than by Upsert or Delete (a proxy's report,
// model.Index.SetNodeTunnelH3): it is committed with the next burst, as an object would be.
func (s *Store) Changed() { s.poke() }

func (s *Store) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// MarkSynced records that a source has delivered its initial state; Synced becomes true at
// the next commit.
func (s *Store) MarkSynced() { s.syncReq.Store(true); s.poke() }

// Synced reports whether the initial state has been loaded and committed.
func (s *Store) Synced() bool { return s.synced.Load() }

// Subscribe returns a channel that receives a value (coalesced) after each commit that
// changed some resource.
func (s *Store) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs = append(s.subs, ch)
	s.mu.Unlock()
	return ch
}

// SubscribeCommits returns a channel that receives a value (coalesced) after every commit,
// whether or not it changed a resource: Problems may have changed (an object refused keeps
// the resources as they were). The status writer reads Problems again then.
func (s *Store) SubscribeCommits() <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.commits = append(s.commits, ch)
	s.mu.Unlock()
	return ch
}

// Run commits the index after each burst of changes until ctx ends.
func (s *Store) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		first := time.Now()
		quiet := time.NewTimer(s.opts.Debounce)
	wait:
		for {
			select {
			case <-ctx.Done():
				quiet.Stop()
				return nil
			case <-s.kick:
				left := s.opts.MaxDelay - time.Since(first)
				quiet.Reset(min(s.opts.Debounce, max(left, 0)))
			case <-quiet.C:
				break wait
			}
		}
		s.commit()
	}
}

func (s *Store) commit() {
	start := time.Now()
	changes := s.idx.Commit()
	for _, err := range s.idx.CommitErrors() {
		s.logCommitError(err)
	}
	if s.syncReq.Load() {
		s.synced.Store(true)
	}
	s.mu.Lock()
	notify(s.commits)
	s.mu.Unlock()
	if len(changes) == 0 {
		return
	}
	s.log.Debug("model committed", "changes", len(changes), "generation", s.idx.Generation(), "duration", time.Since(start))
	s.mu.Lock()
	defer s.mu.Unlock()
	notify(s.subs)
}

func notify(chs []chan struct{}) {
	for _, ch := range chs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
