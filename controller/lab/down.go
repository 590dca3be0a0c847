package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Down removes everything a lab made: its processes (recorded, or found by the state dir in
// their arguments), every namespace and link with the lab's prefix, and the state dir. It
// is safe to run on a lab that is half up, crashed or already down.
func Down(ctx context.Context, o Options) error {
	if o.Dir == "" {
		o.Dir = DefaultStateDir
	}
	if err := o.complete(); err != nil {
		return err
	}
	unlock, err := lockState(o.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := down(ctx, o); err != nil {
		return err
	}
	return os.RemoveAll(o.Dir)
}

// down is Down with the state lock held, except that it empties the state dir and leaves
// the dir itself: the lock is a flock on the dir, and `lab up`, which calls down before it
// makes the lab anew, must go on holding it. (When down removed the dir, up held a lock on a
// deleted dir while the controller it started ran `lab waypoints-sync`, which then locked the
// new dir, loaded a state without pods and could save it over up's.)
func down(ctx context.Context, o Options) error {
	var errs []error
	st, err := LoadState(o.Dir)
	if err == nil && st.Prefix != "" {
		o.Prefix = st.Prefix
	}
	var pids []int
	if st != nil {
		// apps first, ztunnels next, the controller last: nothing logs a missing peer twice
		for _, p := range st.Pods {
			for _, a := range p.Apps {
				pids = append(pids, a.Proc.PID)
			}
		}
		for _, w := range st.Waypoints {
			pids = append(pids, w.Proc.PID)
		}
		for _, n := range st.Nodes {
			pids = append(pids, n.Ztunnel.PID)
		}
		pids = append(pids, st.Controller.PID)
	}
	pids = append(pids, strays(o.Dir)...)
	stopped := 0
	for _, pid := range pids {
		if !alive(pid) {
			continue
		}
		if err := stop(pid, 5*time.Second); err != nil {
			errs = append(errs, err)
		} else {
			stopped++
		}
	}
	if os.Geteuid() == 0 {
		errs = append(errs, removeHost(ctx, names{o.Prefix})...)
	} else if st != nil {
		errs = append(errs, errors.New("not root: cannot remove the lab's namespaces and links"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab down: %w", errors.Join(errs...))
	}
	if err := emptyDir(o.Dir); err != nil {
		return err
	}
	if st != nil {
		o.printf("lab %s is down: %d processes stopped, namespaces and links with prefix %s removed", st.Name, stopped, o.Prefix)
	} else {
		o.printf("no lab was up in %s; nothing with prefix %s is left", o.Dir, o.Prefix)
	}
	return nil
}

// emptyDir removes everything in dir, and not dir itself; a missing dir is empty.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
