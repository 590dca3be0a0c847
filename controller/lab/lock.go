package lab

import (
	"fmt"
	"os"
	"syscall"
)

// lockState takes an exclusive flock on the lab's state dir, held by whatever reads, changes
// and saves state.json: `lab up` and `down`, a ztunnel restart, and the controller's
// `lab waypoints-sync`, which run as separate processes and would otherwise lose each
// other's changes. A dir that does not exist needs no lock.
func lockState(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if os.IsNotExist(err) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab state dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab state dir %s: lock: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
