// Package e2elock keeps the machine's two kinds of heavy end-to-end suite apart: the test
// clusters (clustertest: containerd, kubelets and real pods, which share the host's PID space,
// /run/netns and cgroups) and the local lab of controller/lab (network namespaces, iptables,
// processes found by PID). Clusters may run beside each other (a shared lock, each in its own
// slot); the lab runs alone (an exclusive one). On a 2-core machine they would otherwise compete
// for the same cores in the suites most sensitive to timing, and one CI run saw the lab's
// controller die while a cluster ran beside it.
//
// The lock is an flock on a file under /run: the kernel drops it when its holder dies, so a
// crashed test never blocks the next.
package e2elock

import (
	"fmt"
	"os"
	"syscall"
)

// Path is the lock file.
const Path = "/run/ambit-e2e.lock"

// Shared waits for the lab to be gone and holds the lock with the other clusters; release
// gives it back.
func Shared() (release func(), err error) { return take(Path, syscall.LOCK_SH) }

// Exclusive waits until no cluster and no other lab holds the lock.
func Exclusive() (release func(), err error) { return take(Path, syscall.LOCK_EX) }

func take(path string, how int) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("e2e lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("e2e lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
