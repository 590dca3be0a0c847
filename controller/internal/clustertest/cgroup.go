package clustertest

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMounts lists the mountpoints of every cgroup hierarchy (v1 controllers, named ones,
// and the v2 unified one of a hybrid host).
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		i := slices.Index(fields, "-")
		if i < 0 || i+1 >= len(fields) {
			continue
		}
		if t := fields[i+1]; t == "cgroup" || t == "cgroup2" {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}

// trackingHierarchy is where the harness puts its processes so that it can find every one of
// them and their descendants, shims and containers included, also after a crash.
func trackingHierarchy(mounts []string) (string, error) {
	for _, want := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer", "/sys/fs/cgroup/memory"} {
		if slices.Contains(mounts, want) {
			return want, nil
		}
	}
	return "", fmt.Errorf("no pids, freezer or memory cgroup hierarchy mounted (have %v)", mounts)
}

// cgroupCreate makes rel in every hierarchy; a new cpuset gets its parent's cpus and mems,
// without which no task can join it.
func cgroupCreate(rel string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		dir := m
		for _, part := range strings.Split(strings.Trim(rel, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("cgroup %s: %w", dir, err)
			}
			if strings.HasSuffix(m, "/cpuset") {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) != "" {
						continue
					}
					v, err := os.ReadFile(filepath.Join(parent, f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
						return fmt.Errorf("cgroup %s: %s: %w", dir, f, err)
					}
				}
			}
		}
	}
	return nil
}

// cgroupAdd moves pid into rel of the tracking hierarchy; its future children follow.
func cgroupAdd(rel string, pid int) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	h, err := trackingHierarchy(mounts)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(h, rel, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// cgroupProcs lists the processes anywhere under rel, in any hierarchy.
func cgroupProcs(rel string) []int {
	mounts, _ := cgroupMounts()
	seen := map[int]bool{}
	var pids []int
	for _, m := range mounts {
		_ = filepath.WalkDir(filepath.Join(m, rel), func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// cgroupKill SIGKILLs every process under rel until none is left or timeout passes.
func cgroupKill(rel string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := cgroupProcs(rel)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", rel, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgroupRemove removes rel and everything under it from every hierarchy, deepest first.
func cgroupRemove(rel string, timeout time.Duration) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, m := range mounts {
			var dirs []string
			_ = filepath.WalkDir(filepath.Join(m, rel), func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
					left = append(left, dirs[i])
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups not removed (busy): %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cgroupLeft lists the directories under rel still present in any hierarchy.
func cgroupLeft(rel string) []string {
	mounts, _ := cgroupMounts()
	var left []string
	for _, m := range mounts {
		if _, err := os.Stat(filepath.Join(m, rel)); err == nil {
			left = append(left, filepath.Join(m, rel))
		}
	}
	return left
}
