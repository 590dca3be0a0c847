package clustertest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// What a node changes on the host outside its own namespaces, and the harness puts back when
// the last cluster on the machine ends.
var (
	// kubeletSysctls are the kernel settings the kubelet sets (and never restores); they are
	// global, not per network namespace.
	kubeletSysctls = []string{
		"kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom",
		"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
	}
	// nodeMountpoints are fixed paths the kubelet, containerd and the CNI plugins write to
	// whatever their flags say, and the standard CNI directories (where a node agent installs
	// a chained plugin). Inside a node's mount namespace each gets a directory of the node
	// bound onto it; on the host only the empty directory is needed (and removed after).
	nodeMountpoints = []string{"/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/var/log/pods", "/var/log/containers",
		"/opt/cni/bin", "/etc/cni/net.d", "/run/netns"}
)

// hostState is BaseDir/host.json: the host's values before the first live cluster changed
// them. It stays while any cluster lives (or until a crashed one is swept).
type hostState struct {
	Sysctls map[string]string `json:"sysctls"`
	// Created are the mountpoint directories the harness created.
	Created []string `json:"created"`
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(key, value string) error {
	return os.WriteFile(sysctlPath(key), []byte(value), 0o644)
}

// lock takes an exclusive flock on path; with wait false it reports false instead of waiting
// when another process holds it. The kernel drops the lock when the holder dies. Lock files
// are never removed (a removed one could be locked by two processes through two inodes).
func lock(path string, wait bool) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, err
	}
	return flock(f, path, wait)
}

// lockExisting is lock for a file that exists; a missing one is not locked by anyone.
func lockExisting(path string) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return flock(f, path, false)
}

func flock(f *os.File, path string, wait bool) (*os.File, bool, error) {
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, true, nil
}

func unlock(f *os.File) {
	if f == nil {
		return
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}

func slotLockPath(slot int) string { return filepath.Join(BaseDir(), "s"+strconv.Itoa(slot)+".lock") }

// slotLive reports whether another process holds slot's lock.
func slotLive(slot int) bool {
	f, ok, err := lockExisting(slotLockPath(slot))
	if err != nil {
		return false
	}
	if ok {
		unlock(f)
	}
	return !ok
}

// withHost runs f with the host lock held and the host state loaded; f's state is saved
// unless f returns nil for it.
func withHost(f func(st *hostState) (*hostState, error)) error {
	l, _, err := lock(filepath.Join(BaseDir(), "host.lock"), true)
	if err != nil {
		return err
	}
	defer unlock(l)
	path := filepath.Join(BaseDir(), "host.json")
	var st *hostState
	if b, err := os.ReadFile(path); err == nil {
		st = new(hostState)
		if err := json.Unmarshal(b, st); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	st, err = f(st)
	if err != nil {
		return err
	}
	if st == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// hostAcquire records the host's values (unless a live or crashed cluster already did) and
// creates the missing mountpoints.
func hostAcquire(mountpoints []string) error {
	return withHost(func(st *hostState) (*hostState, error) {
		if st == nil {
			st = &hostState{Sysctls: map[string]string{}}
			for _, k := range kubeletSysctls {
				v, err := readSysctl(k)
				if err != nil {
					return nil, fmt.Errorf("sysctl %s: %w", k, err)
				}
				st.Sysctls[k] = v
			}
		}
		for _, d := range mountpoints {
			// Record every directory made, parents first, so that release removes them all.
			var missing []string
			for p := d; p != "/"; p = filepath.Dir(p) {
				if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
					missing = append([]string{p}, missing...)
				}
			}
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
			st.Created = append(st.Created, missing...)
		}
		return st, nil
	})
}

// hostRelease puts the host back as hostAcquire found it, unless a cluster other than
// except's still lives.
func hostRelease(except int) error {
	return withHost(func(st *hostState) (*hostState, error) {
		if st == nil {
			return nil, nil
		}
		for s := range MaxSlots {
			if s != except && slotLive(s) {
				return st, nil
			}
		}
		var errs []error
		for k, v := range st.Sysctls {
			if cur, err := readSysctl(k); err == nil && cur != v {
				if err := writeSysctl(k, v); err != nil {
					errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, v, err))
				}
			}
		}
		// Deepest first; a directory someone else has since filled stays.
		for i := len(st.Created) - 1; i >= 0; i-- {
			_ = os.Remove(st.Created[i])
		}
		if len(errs) > 0 {
			return st, errors.Join(errs...)
		}
		return nil, nil
	})
}
