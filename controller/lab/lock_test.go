package lab

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// `lab up` takes the state lock, then takes down whatever an earlier lab left, then makes the
// lab: all the while, another locker (the controller's `lab waypoints-sync`) must wait. When
// down removed the state dir, up went on holding a lock on a deleted dir and the other locker
// got the new dir's at once.
func TestDownKeepsUpsLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lab")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "logs", "controller.log"), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := down(t.Context(), Options{Dir: dir, Prefix: "ambitlk", Out: io.Discard}); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("after down the state dir holds %v (%v), want it empty", entries, err)
	}
	got := make(chan struct{})
	go func() {
		u, err := lockState(dir)
		if err != nil {
			t.Error(err)
		} else {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("another process got the state lock while up held it")
	case <-time.After(300 * time.Millisecond):
	}
	unlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the lock was not free after up released it")
	}
}
