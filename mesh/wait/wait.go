// Package wait is the tests' one way to wait for something that happens on another
// goroutine or in another process: poll a condition until it holds or a timeout passes, then
// fail the test with the condition's last answer. Any module's tests may import it.
package wait

import (
	"testing"
	"time"
)

// The first polls come quickly, for conditions that hold almost at once; later ones back off
// so that a long wait does not busy the machine's (shared) cores.
const (
	firstPoll = time.Millisecond
	maxPoll   = 20 * time.Millisecond
)

// Until calls cond until it returns nil. If timeout passes first, it fails the test with
// t.Fatalf, naming what was awaited and cond's last error, which should say what was seen
// instead. cond runs at least once, and once more after the timeout has passed.
func Until(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for poll := firstPoll; ; poll = min(2*poll, maxPoll) {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
			return // a t whose Fatalf returns, such as a fake
		}
		time.Sleep(poll)
	}
}
