package e2elock

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSharedThenExclusive: two shared holders run together; an exclusive one waits for both.
// On a lock file of its own: the machine's is held by the e2e tests running beside it.
func TestSharedThenExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e2e.lock")
	shared := func() (func(), error) { return take(path, syscall.LOCK_SH) }
	exclusive := func() (func(), error) { return take(path, syscall.LOCK_EX) }
	r1, err := shared()
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan func(), 1)
	go func() {
		r2, err := shared()
		if err != nil {
			t.Error(err)
		}
		second <- r2
	}()
	var r2 func()
	select {
	case r2 = <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("a second shared holder waited for the first")
	}
	got := make(chan func(), 1)
	go func() {
		r, err := exclusive()
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	r1()
	select {
	case <-got:
		t.Fatal("the exclusive holder got the lock while a shared one held it")
	case <-time.After(200 * time.Millisecond):
	}
	r2()
	select {
	case r := <-got:
		r()
	case <-time.After(5 * time.Second):
		t.Fatal("the exclusive holder did not get the lock once the shared ones released it")
	}
}
