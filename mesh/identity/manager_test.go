package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"ambit.dev/proto/dump"
)

// maxWait bounds every real-time wait in these tests; nothing should come near it.
const maxWait = 10 * time.Second

var errSignerDown = errors.New("signer down")

// testSigner wraps a CA so a test can make it fail or hang, and see each call.
type testSigner struct {
	ca    *identity.CA
	calls chan spiffeid.ID // one value per call, sent when the call starts

	mu    sync.Mutex
	fail  error
	block chan struct{} // non-nil: calls wait for it to close (or ctx)
}

func (s *testSigner) CreateCertificate(ctx context.Context, id spiffeid.ID, csr []byte, ttl time.Duration) ([][]byte, error) {
	s.mu.Lock()
	fail, block, ca := s.fail, s.block, s.ca
	s.mu.Unlock()
	s.calls <- id
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	return ca.CreateCertificate(ctx, id, csr, ttl)
}

// setCA makes the signer sign with ca from now on (a CA restarted with a new root).
func (s *testSigner) setCA(ca *identity.CA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ca = ca
}

func (s *testSigner) setFail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
}

// setBlock makes calls hang until the returned function is called.
func (s *testSigner) setBlock() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.block = ch
	s.mu.Unlock()
	return sync.OnceFunc(func() {
		s.mu.Lock()
		s.block = nil
		s.mu.Unlock()
		close(ch)
	})
}

type harness struct {
	t      *testing.T
	clock  *identitytest.FakeClock
	signer *testSigner
	m      *identity.Manager
	ctx    context.Context
}

// newHarness starts a Manager with a fake clock shared by it and its CA, and
// stops it (checking that Run returns) at the end of the test.
func newHarness(t *testing.T, opts identity.ManagerOptions) *harness {
	t.Helper()
	clk := identitytest.NewFakeClock(t0)
	s := &testSigner{ca: newCA(t, identity.CAOptions{Clock: clk}), calls: make(chan spiffeid.ID, 100)}
	opts.Signer, opts.Clock = s, clk
	m := identity.NewManager(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(maxWait):
			t.Errorf("Run did not return after cancel")
		}
	})
	return &harness{t: t, clock: clk, signer: s, m: m, ctx: ctx}
}

func (h *harness) cert(id spiffeid.ID) *tls.Certificate {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), maxWait)
	defer cancel()
	c, err := h.m.Certificate(ctx, id)
	if err != nil {
		h.t.Fatalf("Certificate(%s): %v", id, err)
	}
	return c
}

// call waits for the signer to be called for id.
func (h *harness) call(id spiffeid.ID) {
	h.t.Helper()
	select {
	case got := <-h.signer.calls:
		if got != id {
			h.t.Fatalf("signer called for %s, want %s", got, id)
		}
	case <-time.After(maxWait):
		h.t.Fatalf("signer not called for %s", id)
	}
}

func (h *harness) noCall() {
	h.t.Helper()
	select {
	case got := <-h.signer.calls:
		h.t.Fatalf("unexpected signer call for %s", got)
	default:
	}
}

// timer waits until the manager has armed a timer matching match and returns its deadline.
func (h *harness) timer(match func(time.Time) bool) time.Time {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), maxWait)
	defer cancel()
	d, err := h.clock.WaitForTimer(ctx, match)
	if err != nil {
		h.t.Fatalf("no timer armed (pending %v): %v", h.clock.Timers(), err)
	}
	return d
}

func (h *harness) state(id spiffeid.ID) dump.CertInfo {
	h.t.Helper()
	for _, ci := range h.m.Identities() {
		if ci.ID == id {
			return ci
		}
	}
	h.t.Fatalf("Identities has no %s", id)
	return dump.CertInfo{}
}

// renewAt is the half-life of c counted from its issue (the CA backdates NotBefore by a
// minute; the fake clock does not move while the manager receives it).
func renewAt(c *tls.Certificate) time.Time {
	issued := c.Leaf.NotBefore.Add(time.Minute)
	return issued.Add(c.Leaf.NotAfter.Sub(issued) / 2)
}

// renewsAt matches the renewal time of c issued at a fake time with a fraction of a second
// (after jittered retries): X.509 keeps whole seconds, the manager counts from the precise
// time it received c.
func renewsAt(c *tls.Certificate) func(time.Time) bool {
	at := renewAt(c)
	return func(dl time.Time) bool { return !dl.Before(at) && dl.Before(at.Add(time.Second)) }
}

func TestManagerFirstCertificate(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	c := h.cert(id)
	h.call(id)

	if len(c.Certificate) != 1 || c.Leaf == nil || string(c.Leaf.Raw) != string(c.Certificate[0]) {
		t.Fatalf("tls.Certificate chain/Leaf not set: %d certs, leaf %v", len(c.Certificate), c.Leaf != nil)
	}
	key, ok := c.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !isP256(&key.PublicKey) || !key.PublicKey.Equal(c.Leaf.PublicKey) {
		t.Fatalf("PrivateKey %T is not the P-256 key of the leaf", c.PrivateKey)
	}
	if got, err := identity.VerifyPeerAt(c.Certificate, h.signer.ca.Bundle(), h.clock.Now()); err != nil || got != id {
		t.Fatalf("VerifyPeer = %s, %v", got, err)
	}
	if again := h.cert(id); again != c {
		t.Fatal("second Certificate call did not return the cached certificate")
	}
	h.noCall()
	ci := h.state(id)
	if ci.State != dump.StateValid || ci.Serial != c.Leaf.SerialNumber.Text(16) || !ci.NotAfter.Equal(c.Leaf.NotAfter) || !ci.NextFetch.Equal(renewAt(c)) {
		t.Fatalf("Identities = %+v", ci)
	}
}

func TestManagerRenewsAtHalfLife(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	old := h.cert(id)
	h.call(id)
	at := renewAt(old)
	if want := t0.Add(12 * time.Hour); !at.Equal(want) {
		t.Fatalf("half-life = %s, want %s", at, want)
	}
	h.timer(at.Equal)

	h.clock.Set(at.Add(-time.Second))
	h.noCall()
	if h.cert(id) != old {
		t.Fatal("certificate changed before half-life")
	}

	h.clock.Set(at)
	h.call(id)
	var renewed *tls.Certificate
	wait.Until(t, maxWait, "renewed certificate", func() error {
		if renewed = h.cert(id); renewed == old {
			return errors.New("still the old certificate")
		}
		return nil
	})
	if renewed.Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) == 0 {
		t.Fatal("renewal kept the serial")
	}
	if renewed.PrivateKey.(*ecdsa.PrivateKey).Equal(old.PrivateKey) {
		t.Fatal("renewal reused the private key")
	}
	// And the next renewal is scheduled from the new certificate.
	h.timer(renewsAt(renewed))
}

func TestManagerBackoff(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	old := h.cert(id)
	h.call(id)
	h.timer(renewAt(old).Equal)

	h.signer.setFail(errSignerDown)
	h.clock.Set(renewAt(old))
	h.call(id)

	for i, want := range []time.Duration{
		500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 32 * time.Second, 64 * time.Second, 128 * time.Second, 150 * time.Second, 150 * time.Second,
	} {
		now := h.clock.Now()
		d := h.timer(func(dl time.Time) bool { return dl.After(now) }).Sub(now)
		// Jitter only shortens a delay, by at most 10%.
		if d > want || d < want-want/10 {
			t.Fatalf("retry %d after %s, want %s (-10%% jitter)", i+1, d, want)
		}
		if c := h.cert(id); c != old {
			t.Fatal("old certificate not served while renewal fails")
		}
		ci := h.state(id)
		if ci.State != dump.StateRetrying || !strings.Contains(ci.LastError, errSignerDown.Error()) {
			t.Fatalf("Identities = %+v, want retrying with the signer error", ci)
		}
		h.clock.Advance(d - time.Millisecond)
		h.noCall()
		h.clock.Advance(time.Millisecond)
		h.call(id)
	}

	h.signer.setFail(nil)
	now := h.clock.Now()
	h.clock.Set(h.timer(func(dl time.Time) bool { return dl.After(now) }))
	h.call(id)
	var renewed *tls.Certificate
	wait.Until(t, maxWait, "renewal after recovery", func() error {
		if renewed = h.cert(id); renewed == old {
			return errors.New("still the old certificate")
		}
		return nil
	})
	// Success resets the backoff: the next wake-up is the new half-life.
	h.timer(renewsAt(renewed))
	if ci := h.state(id); ci.State != dump.StateValid || ci.LastError != "" {
		t.Fatalf("Identities = %+v, want valid", ci)
	}
}

// TestManagerShortLived: a certificate of 30 s (shorter than the CA's one-minute backdating)
// is renewed 15 s after it arrives, not in a loop, and while the signer is down the retries
// come closer together as the expiry nears instead of backing off past it.
func TestManagerShortLived(t *testing.T) {
	var logs lockedBuffer
	h := newHarness(t, identity.ManagerOptions{TTL: 30 * time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	id := mustID(t, "default", "web")
	old := h.cert(id)
	h.call(id)
	if got := old.Leaf.NotAfter.Sub(t0); got != 30*time.Second {
		t.Fatalf("certificate lives %s from issue, want 30s", got)
	}
	h.timer(t0.Add(15 * time.Second).Equal)

	h.signer.setFail(errSignerDown)
	h.clock.Set(t0.Add(15 * time.Second))
	h.call(id)
	exp := old.Leaf.NotAfter
	var attempts []time.Duration
	for h.clock.Now().Before(exp) {
		now := h.clock.Now()
		next := h.timer(func(dl time.Time) bool { return dl.After(now) })
		left := exp.Sub(now)
		if d := next.Sub(now); d > max(left/2, identity.DefaultMinBackoff) {
			t.Fatalf("retry at %s waits %s with %s left, want at most half of that", now.Sub(t0), d, left)
		}
		h.clock.Set(next)
		h.call(id)
		attempts = append(attempts, next.Sub(t0))
	}
	// 15.5, 16.5, 18.5, 22.5 (backoff), then capped: about 26.3, 28.1, 29.1, 29.6, 30.1;
	// uncapped the fifth retry would come at 30.5, after the expiry.
	if len(attempts) < 8 {
		t.Fatalf("retries at %v: only %d before the expiry at 30s, want the backoff capped", attempts, len(attempts)-1)
	}
	// Every failure is logged, with its attempt number.
	wait.Until(t, maxWait, "failures logged", func() error {
		if n := strings.Count(logs.String(), `msg="certificate request failed"`); n < len(attempts) {
			return fmt.Errorf("%d failures logged, want %d:\n%s", n, len(attempts), logs.String())
		}
		return nil
	})
}

// lockedBuffer is a log destination the manager's goroutines and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestManagerRetryNow: a caller that knows the signer is back cuts a failed renewal's backoff
// short; identities that did not fail keep their schedule.
func TestManagerRetryNow(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	old := h.cert(id)
	h.call(id)
	h.m.RetryNow()
	h.timer(renewAt(old).Equal)
	h.noCall()

	h.signer.setFail(errSignerDown)
	h.clock.Set(renewAt(old))
	h.call(id)
	for range 4 { // the backoff grows to 8 s
		now := h.clock.Now()
		h.clock.Set(h.timer(func(dl time.Time) bool { return dl.After(now) }))
		h.call(id)
	}
	now := h.clock.Now()
	h.timer(func(dl time.Time) bool { return dl.After(now.Add(4 * time.Second)) })
	h.signer.setFail(nil)
	h.clock.Advance(identity.DefaultMinBackoff)
	h.m.RetryNow()
	h.call(id)
	wait.Until(t, maxWait, "renewed at once", func() error {
		if h.cert(id) == old {
			return errors.New("still the old certificate")
		}
		return nil
	})
}

func TestManagerNeverBlocksOnRenewal(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	old := h.cert(id)
	h.call(id)
	h.timer(renewAt(old).Equal)

	release := h.signer.setBlock()
	defer release()
	h.clock.Set(renewAt(old))
	h.call(id) // the renewal is now stuck inside the signer

	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		c, err := h.m.Certificate(ctx, id)
		cancel()
		if err != nil || c != old {
			t.Fatalf("Certificate during renewal = %v, %v; want the current certificate at once", c, err)
		}
		if el := time.Since(start); el > 50*time.Millisecond {
			t.Fatalf("Certificate took %s during renewal", el)
		}
	}
	if ci := h.state(id); ci.State != dump.StateRenewing {
		t.Fatalf("state = %s, want renewing", ci.State)
	}
	release()
	wait.Until(t, maxWait, "renewal after unblock", func() error {
		if h.cert(id) == old {
			return errors.New("still the old certificate")
		}
		return nil
	})
}

func TestManagerExpiry(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	old := h.cert(id)
	h.call(id)
	h.timer(renewAt(old).Equal)

	h.signer.setFail(errSignerDown)
	h.clock.Set(renewAt(old))
	h.call(id)
	// Fail until the backoff is long (64s), so pulling forward is visible.
	for range 7 {
		now := h.clock.Now()
		h.clock.Set(h.timer(func(dl time.Time) bool { return dl.After(now) }))
		h.call(id)
	}
	// Jumping to the expiry fires the pending retry once; it fails too and
	// the next retry is about two minutes out.
	now := h.clock.Now()
	h.timer(func(dl time.Time) bool { return dl.After(now) })
	exp := old.Leaf.NotAfter
	h.clock.Set(exp)
	h.call(id)
	if next := h.timer(func(dl time.Time) bool { return dl.After(exp) }); next.Sub(exp) < time.Minute {
		t.Fatalf("retry after %s, want about 2m", next.Sub(exp))
	}

	ctx, cancel := context.WithTimeout(context.Background(), maxWait)
	defer cancel()
	c, err := h.m.Certificate(ctx, id)
	if c != nil || !errors.Is(err, identity.ErrCertificateExpired) || !errors.Is(err, errSignerDown) {
		t.Fatalf("Certificate after expiry = %v, %v; want ErrCertificateExpired carrying the renewal error", c, err)
	}
	if ci := h.state(id); ci.State != dump.StateExpired {
		t.Fatalf("state = %s, want expired", ci.State)
	}
	// The failed call pulled the next request forward to MinBackoff after the
	// last one, instead of waiting out the backoff.
	h.timer(exp.Add(identity.DefaultMinBackoff).Equal)
	h.signer.setFail(nil)
	h.clock.Advance(identity.DefaultMinBackoff)
	h.call(id)
	wait.Until(t, maxWait, "certificate after expiry", func() error {
		c, err := h.m.Certificate(ctx, id)
		if err == nil && c == old {
			return errors.New("still the old certificate")
		}
		return err
	})
}

func TestManagerFirstRequestFails(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	h.signer.setFail(errSignerDown)
	ctx, cancel := context.WithTimeout(context.Background(), maxWait)
	defer cancel()
	if _, err := h.m.Certificate(ctx, id); !errors.Is(err, errSignerDown) {
		t.Fatalf("Certificate = %v, want the signer's error", err)
	}
	h.call(id)
	if ci := h.state(id); ci.State != dump.StateFailed {
		t.Fatalf("state = %s, want failed", ci.State)
	}
	// The next caller waits for the retry, which may not start sooner than
	// MinBackoff after the failure.
	h.signer.setFail(nil)
	got := make(chan error, 1)
	go func() {
		_, err := h.m.Certificate(ctx, id)
		got <- err
	}()
	now := h.clock.Now()
	h.clock.Set(h.timer(func(dl time.Time) bool { return dl.After(now) }))
	h.call(id)
	if err := <-got; err != nil {
		t.Fatalf("Certificate after retry: %v", err)
	}
}

func TestManagerPrefetch(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{TTL: time.Hour})
	id := mustID(t, "default", "web")
	h.m.Prefetch(id)
	h.call(id)
	wait.Until(t, maxWait, "prefetched certificate", func() error {
		if st := h.state(id).State; st != dump.StateValid {
			return fmt.Errorf("state %v", st)
		}
		return nil
	})
	c := h.cert(id)
	h.noCall()
	if got := c.Leaf.NotAfter.Sub(t0); got != time.Hour {
		t.Fatalf("TTL option not passed to the signer: lifetime %s", got)
	}
}

func TestManagerForget(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id, other := mustID(t, "default", "web"), mustID(t, "default", "db")
	c := h.cert(id)
	h.call(id)
	h.timer(renewAt(c).Equal)

	h.m.Forget(id)
	if n := len(h.m.Identities()); n != 0 {
		t.Fatalf("Identities after Forget has %d entries", n)
	}
	wait.Until(t, maxWait, "renewal timer dropped", func() error {
		if n := len(h.clock.Timers()); n != 0 {
			return fmt.Errorf("%d timers", n)
		}
		return nil
	})
	h.clock.Set(c.Leaf.NotAfter)
	h.m.Prefetch(other)
	h.call(other)
	h.cert(other)
	h.noCall()
}

func TestManagerForgetWhileWaiting(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	release := h.signer.setBlock()
	defer release()
	got := make(chan error, 1)
	go func() {
		_, err := h.m.Certificate(context.Background(), id)
		got <- err
	}()
	h.call(id)
	h.m.Forget(id)
	select {
	case err := <-got:
		if !errors.Is(err, identity.ErrForgotten) {
			t.Fatalf("Certificate = %v, want ErrForgotten", err)
		}
	case <-time.After(maxWait):
		t.Fatal("Certificate still waiting after Forget")
	}
}

func TestManagerCertificateHonoursContext(t *testing.T) {
	h := newHarness(t, identity.ManagerOptions{})
	id := mustID(t, "default", "web")
	release := h.signer.setBlock()
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.m.Certificate(ctx, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Certificate = %v, want deadline exceeded", err)
	}
}

func TestManagerRunStops(t *testing.T) {
	defer goleak.VerifyNone(t)
	clk := identitytest.NewFakeClock(t0)
	s := &testSigner{ca: newCA(t, identity.CAOptions{Clock: clk}), calls: make(chan spiffeid.ID, 100)}
	m := identity.NewManager(identity.ManagerOptions{Signer: s, Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	id := mustID(t, "default", "web")
	if _, err := m.Certificate(ctx, id); err != nil {
		t.Fatal(err)
	}
	<-s.calls
	// Leave one request hanging in the signer and another identity's timer armed.
	release := s.setBlock()
	defer release()
	m.Prefetch(mustID(t, "default", "db"))
	<-s.calls

	waiting := make(chan error, 1)
	go func() {
		_, err := m.Certificate(context.Background(), mustID(t, "default", "db"))
		waiting <- err
	}()

	if err := m.Run(ctx); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("second Run = %v, want an error", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(maxWait):
		t.Fatal("Run did not return after cancel")
	}
	if err := <-waiting; err == nil {
		t.Fatal("Certificate waiting on a stopped manager returned no error")
	}
	// Still served from memory after stop.
	if _, err := m.Certificate(t.Context(), id); err != nil {
		t.Fatalf("Certificate after stop: %v", err)
	}
}
