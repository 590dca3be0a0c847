//go:build unix

package configdir

import (
	"fmt"
	"os"
	"syscall"
)

// LockDir takes an exclusive flock on dir itself (the lab locks its state dir with it too), so that two ambitctl runs editing the same
// folder take turns instead of one overwriting the other's edit of a shared file. Locking the
// directory leaves no lock file behind in a folder that is often a git checkout.
func LockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
