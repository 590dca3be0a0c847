//go:build unix

package configdir

import (
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive flock on dir itself, so that two ambitctl runs editing the same
// folder take turns instead of one overwriting the other's edit of a shared file. Locking the
// directory leaves no lock file behind in a folder that is often a git checkout.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("config dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("config dir %s: lock: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
