package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"ambit.dev/proto/dump"
)

// Manager defaults.
const (
	DefaultMinBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff     = 150 * time.Second
	DefaultRequestTimeout = 30 * time.Second
)

// ErrForgotten is returned to a Certificate call whose identity was dropped by
// Forget while it waited.
var ErrForgotten = errors.New("identity was forgotten")

// ErrManagerStopped is returned to a Certificate call waiting for a first
// certificate when Run has returned.
var ErrManagerStopped = errors.New("certificate manager stopped")

// ManagerOptions configures a Manager. Zero fields take the defaults noted.
type ManagerOptions struct {
	// Signer issues certificates. Required.
	Signer Signer
	// TTL requested for each certificate; 0 lets the signer choose (24h for a CA).
	TTL time.Duration
	// Clock drives renewal and expiry. Default RealClock().
	Clock Clock
	// Logger for renewals and failures. Default discards.
	Logger *slog.Logger
	// MinBackoff is the first retry delay after a failed request; it doubles
	// up to MaxBackoff. Defaults 500ms and 150s. Each delay is shortened by
	// up to 10% at random so proxies that failed together do not retry together,
	// and never exceeds half the time the current certificate has left (nor goes
	// below MinBackoff).
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one signer call (real time). Default 30s.
	RequestTimeout time.Duration
	// SignerChangeSpread: when a certificate arrives from another signing CA than the ones
	// held (the CA's root rotated), every other certificate is renewed at a random moment
	// within this period instead of at its half-life, so the proxy moves to the new signer
	// at once without asking for all its certificates in the same instant. Default 30s.
	SignerChangeSpread time.Duration
}

// DefaultSignerChangeSpread is ManagerOptions.SignerChangeSpread's default.
const DefaultSignerChangeSpread = 30 * time.Second

// Manager keeps one X.509-SVID per identity a proxy serves. A handshake asks
// Certificate and gets the current certificate from memory; the renewal loop
// (Run) replaces it at half-life (half the time between its arrival and its
// NotAfter), in the background, with a fresh key.
type Manager struct {
	opts    ManagerOptions
	kick    chan struct{} // wakes Run to reschedule; buffered, never blocks
	stopped chan struct{} // closed when Run returns
	running atomic.Bool

	mu      sync.Mutex
	entries map[spiffeid.ID]*entry
}

// entry is the state of one identity, guarded by Manager.mu.
type entry struct {
	id       spiffeid.ID
	cert     *tls.Certificate // current certificate, nil until the first success
	next     time.Time        // when Run should start the next request
	inflight bool
	cancel   context.CancelFunc // cancels the in-flight request (Forget)
	lastEnd  time.Time          // when the last request finished
	lastErr  error
	failures int           // consecutive failed requests
	settled  chan struct{} // closed (and replaced) when a request finishes
}

// NewManager returns a Manager; call Run to start fetching and renewing.
func NewManager(opts ManagerOptions) *Manager {
	if opts.Clock == nil {
		opts.Clock = RealClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.SignerChangeSpread <= 0 {
		opts.SignerChangeSpread = DefaultSignerChangeSpread
	}
	return &Manager{
		opts:    opts,
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		entries: make(map[spiffeid.ID]*entry),
	}
}

// Run owns the renewal loop and every request it starts. It returns nil when
// ctx ends, after in-flight requests (whose context is cancelled) have
// returned. It may be called only once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("certificate manager: Run called twice")
	}
	var wg sync.WaitGroup
	defer close(m.stopped)
	defer wg.Wait()
	for {
		wait := m.startDue(ctx, &wg)
		var fire <-chan time.Time
		var timer Timer
		if wait >= 0 {
			timer = m.opts.Clock.NewTimer(wait)
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-fire:
		case <-m.kick:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// startDue starts a request for every idle entry whose time has come and
// returns how long until the next one is due, or -1 if nothing is scheduled.
func (m *Manager) startDue(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Clock.Now()
	wait := time.Duration(-1)
	for _, e := range m.entries {
		if e.inflight {
			continue
		}
		if d := e.next.Sub(now); d > 0 {
			if wait < 0 || d < wait {
				wait = d
			}
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		e.inflight, e.cancel = true, cancel
		wg.Go(func() { m.fetch(rctx, e) })
	}
	return wait
}

// fetch runs one request for e and records its outcome.
func (m *Manager) fetch(ctx context.Context, e *entry) {
	cert, err := m.issue(ctx, e.id)
	// Cancelled (Forget, or Run ending) rather than failed; read before e.cancel below.
	cancelled := ctx.Err() != nil

	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.wake()
	e.cancel()
	if m.entries[e.id] != e {
		return // forgotten while in flight; Forget already woke the waiters
	}
	now := m.opts.Clock.Now()
	e.inflight, e.cancel, e.lastEnd = false, nil, now
	if err != nil {
		e.failures++
		e.lastErr = err
		d := m.backoff(e.failures)
		// A retry never waits past half of what the current certificate has left, so
		// short-lived certificates get their last attempts before they expire, not after.
		if e.cert != nil {
			if left := e.cert.Leaf.NotAfter.Sub(now); left > 0 {
				d = min(d, max(left/2, m.opts.MinBackoff))
			}
		}
		e.next = now.Add(d)
		if !cancelled {
			m.opts.Logger.Warn("certificate request failed", "id", e.id.String(), "attempt", e.failures, "retry_in", d, "error", err)
		}
	} else {
		e.cert, e.failures, e.lastErr = cert, 0, nil
		leaf := cert.Leaf
		// Half-life leaves the other half to ride out a control-plane outage. It is
		// half of the life from now, not from NotBefore: a CA backdates NotBefore for
		// clock skew (a minute here), which for a certificate of a minute or less would
		// put the renewal in the past. The floor stops a signer handing out very short
		// certificates from turning this into a busy loop.
		from := maxTime(leaf.NotBefore, now)
		e.next = from.Add(leaf.NotAfter.Sub(from) / 2)
		e.next = maxTime(e.next, now.Add(m.opts.MinBackoff))
		m.opts.Logger.Info("certificate issued", "id", e.id.String(), "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter, "renew_at", e.next)
		m.followSignerLocked(e, now)
	}
	close(e.settled)
	e.settled = make(chan struct{})
}

// issue generates a fresh key, asks the signer and checks that what came back
// is a usable certificate for id and that key.
func (m *Manager) issue(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	if m.opts.Signer == nil {
		return nil, errors.New("certificate manager: no signer configured")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", id, err)
	}
	csr, err := CreateCSR(key, id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	chain, err := m.opts.Signer.CreateCertificate(ctx, id, csr, m.opts.TTL)
	if err != nil {
		return nil, fmt.Errorf("request certificate for %s: %w", id, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("request certificate for %s: signer returned an empty chain", id)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("request certificate for %s: parse leaf: %w", id, err)
	}
	got, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("request certificate for %s: leaf: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("request certificate for %s: signer returned a certificate for %s", id, got)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("request certificate for %s: certificate does not match the requested key", id)
	}
	if !m.opts.Clock.Now().Before(leaf.NotAfter) {
		return nil, fmt.Errorf("request certificate for %s: signer returned a certificate that expired at %s", id, leaf.NotAfter)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// followSignerLocked brings forward the renewal of every certificate whose signing CA is
// not the one of fresh's new certificate: the CA switched to a new signer (a root rotation),
// and the sooner every certificate moves over, the sooner the old root can go.
func (m *Manager) followSignerLocked(fresh *entry, now time.Time) {
	moved := 0
	for _, e := range m.entries {
		if e == fresh || e.cert == nil || e.inflight || sameSigner(e.cert.Leaf, fresh.cert.Leaf) {
			continue
		}
		at := now.Add(time.Duration(mrand.Int64N(int64(m.opts.SignerChangeSpread)) + 1))
		if at.Before(e.next) {
			e.next = at
			moved++
		}
	}
	if moved > 0 {
		m.opts.Logger.Info("signing ca changed; renewing the other certificates", "id", fresh.id.String(),
			"issuer", fresh.cert.Leaf.Issuer.String(), "certificates", moved, "within", m.opts.SignerChangeSpread)
		m.wake()
	}
}

// sameSigner reports whether a and b were signed by the same CA key.
func sameSigner(a, b *x509.Certificate) bool {
	if len(a.AuthorityKeyId) > 0 && len(b.AuthorityKeyId) > 0 {
		return bytes.Equal(a.AuthorityKeyId, b.AuthorityKeyId)
	}
	return bytes.Equal(a.RawIssuer, b.RawIssuer)
}

// backoff returns the delay before retry number n (n >= 1).
func (m *Manager) backoff(n int) time.Duration {
	d := m.opts.MinBackoff
	for i := 1; i < n && d < m.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, m.opts.MaxBackoff)
	if j := int64(d / 10); j > 0 {
		d -= time.Duration(mrand.Int64N(j + 1))
	}
	return d
}

// Certificate returns the current certificate for id. A valid certificate is
// returned at once, even while its renewal is in flight: a handshake never
// waits on the signer. With no certificate yet it waits for the next request
// (bounded by ctx) and returns its result. Once the certificate has expired it
// fails at once and pulls the next request forward. The returned value is
// shared and must not be modified.
func (m *Manager) Certificate(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("certificate: empty spiffe id")
	}
	m.mu.Lock()
	e := m.entryLocked(id)
	now := m.opts.Clock.Now()
	if e.cert != nil {
		cert, leaf, lastErr := e.cert, e.cert.Leaf, e.lastErr
		if now.Before(leaf.NotAfter) {
			m.mu.Unlock()
			return cert, nil
		}
		m.expediteLocked(e, now)
		m.mu.Unlock()
		if lastErr != nil {
			return nil, fmt.Errorf("certificate for %s: %w at %s; last renewal: %w", id, ErrCertificateExpired, leaf.NotAfter.UTC().Format(time.RFC3339), lastErr)
		}
		return nil, fmt.Errorf("certificate for %s: %w at %s", id, ErrCertificateExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	m.expediteLocked(e, now)
	settled := e.settled
	m.mu.Unlock()

	select {
	case <-settled:
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w", id, ctx.Err())
	case <-m.stopped:
		return nil, fmt.Errorf("certificate for %s: %w", id, ErrManagerStopped)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.entries[id] != e:
		return nil, fmt.Errorf("certificate for %s: %w", id, ErrForgotten)
	case e.cert != nil && m.opts.Clock.Now().Before(e.cert.Leaf.NotAfter):
		return e.cert, nil
	case e.lastErr != nil:
		return nil, fmt.Errorf("certificate for %s: %w", id, e.lastErr)
	default:
		return nil, fmt.Errorf("certificate for %s: no valid certificate", id)
	}
}

// Prefetch starts fetching a certificate for id without waiting, so it is
// ready by the time the first connection needs it.
func (m *Manager) Prefetch(id spiffeid.ID) {
	if id.IsZero() {
		return
	}
	m.mu.Lock()
	m.entryLocked(id)
	m.mu.Unlock()
}

// Forget drops id's certificate and stops renewing it, cancelling a request in
// flight. Waiting Certificate calls return ErrForgotten.
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[id]
	if !ok {
		return
	}
	delete(m.entries, id)
	if e.cancel != nil {
		e.cancel()
	}
	close(e.settled)
	m.wake()
}

// RetryNow pulls the next request of every identity whose last request failed forward to
// now (but not sooner than MinBackoff after that failure): a caller that learns the signer is
// back, such as a proxy whose config stream to the controller reconnected, need not wait out
// the backoff.
func (m *Manager) RetryNow() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Clock.Now()
	for _, e := range m.entries {
		if e.lastErr != nil {
			m.expediteLocked(e, now)
		}
	}
}

// Refresh renews one certificate now, the one due soonest (never sooner than MinBackoff
// after its last request): what the CA sends with it, its trust bundle and its signing CA,
// reaches the proxy without waiting for a half-life. If the CA now signs with another CA,
// the other certificates follow within SignerChangeSpread. A proxy calls it when its
// connection to the controller is new, as after the controller restarted with a changed CA.
func (m *Manager) Refresh() {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first *entry
	for _, e := range m.entries {
		if e.inflight {
			return // a request under way brings the news anyway
		}
		if e.cert != nil && (first == nil || e.next.Before(first.next)) {
			first = e
		}
	}
	if first != nil {
		m.expediteLocked(first, m.opts.Clock.Now())
	}
}

// Identities reports every identity's certificate, sorted by ID.
func (m *Manager) Identities() []dump.CertInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Clock.Now()
	out := make([]dump.CertInfo, 0, len(m.entries))
	for _, e := range m.entries {
		ci := dump.CertInfo{ID: e.id, NextFetch: e.next}
		if e.lastErr != nil {
			ci.LastError = e.lastErr.Error()
		}
		switch {
		case e.cert == nil && e.lastErr != nil && !e.inflight:
			ci.State = dump.StateFailed
		case e.cert == nil:
			ci.State = dump.StatePending
		case !now.Before(e.cert.Leaf.NotAfter):
			ci.State = dump.StateExpired
		case e.inflight:
			ci.State = dump.StateRenewing
		case e.lastErr != nil:
			ci.State = dump.StateRetrying
		default:
			ci.State = dump.StateValid
		}
		if e.cert != nil {
			ci.Serial = e.cert.Leaf.SerialNumber.Text(16)
			ci.NotBefore, ci.NotAfter = e.cert.Leaf.NotBefore, e.cert.Leaf.NotAfter
			ci.Issuer = e.cert.Leaf.Issuer.String()
		}
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b dump.CertInfo) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	return out
}

// entryLocked returns id's entry, creating one due now (and waking Run) if
// there is none.
func (m *Manager) entryLocked(id spiffeid.ID) *entry {
	if e, ok := m.entries[id]; ok {
		return e
	}
	e := &entry{id: id, settled: make(chan struct{})}
	m.entries[id] = e
	m.wake()
	return e
}

// expediteLocked moves e's next request to now, but never sooner than
// MinBackoff after the previous one finished, so a stream of handshakes for
// an identity without a valid certificate cannot hammer the signer.
func (m *Manager) expediteLocked(e *entry, now time.Time) {
	if e.inflight {
		return
	}
	at := maxTime(now, e.lastEnd.Add(m.opts.MinBackoff))
	if e.lastEnd.IsZero() {
		at = now
	}
	if at.Before(e.next) {
		e.next = at
		m.wake()
	}
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
