package identity

import "time"

// Clock is the source of time for the CA and the Manager. It is injected so
// tests can move time forward to a renewal deadline or past an expiry
// deterministically (see identitytest.FakeClock).
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the subset of *time.Timer the package needs.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// RealClock returns the Clock backed by the time package.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }
