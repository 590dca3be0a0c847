package lab

import (
	"os"

	"ambit.dev/controller/internal/configdir"
)

// lockState takes an exclusive flock on the lab's state dir, held by whatever reads, changes
// and saves state.json: `lab up` and `down`, a ztunnel restart, and the controller's
// `lab waypoints-sync`, which run as separate processes and would otherwise lose each
// other's changes. A dir that does not exist needs no lock.
func lockState(dir string) (unlock func(), err error) {
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return func() {}, nil
	}
	return configdir.LockDir(dir)
}
