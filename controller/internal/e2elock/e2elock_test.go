package e2elock

import (
	"os"
	"testing"
	"time"
)

// TestSharedThenExclusive: two shared holders run together; an exclusive one waits for both.
func TestSharedThenExclusive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the lock file is under /run")
	}
	r1, err := Shared()
	if err != nil {
		t.Fatal(err)
	}
	shared := make(chan func(), 1)
	go func() {
		r2, err := Shared()
		if err != nil {
			t.Error(err)
		}
		shared <- r2
	}()
	var r2 func()
	select {
	case r2 = <-shared:
	case <-time.After(5 * time.Second):
		t.Fatal("a second shared holder waited for the first")
	}
	got := make(chan func(), 1)
	go func() {
		r, err := Exclusive()
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
