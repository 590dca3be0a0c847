package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// start runs a lab process in its own session, its output appended to log, and returns
// without waiting for it: the process outlives `ambitctl lab up`.
func start(log string, name string, args ...string) (ProcState, error) {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return ProcState{}, err
	}
	defer f.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return ProcState{}, fmt.Errorf("start %s: %w", filepath.Base(name), err)
	}
	// Released, not waited for; stop reaps it when it is still our child.
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return ProcState{PID: pid, Log: log}, nil
}

// alive reports whether pid runs (a zombie child counts as gone).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	var ws syscall.WaitStatus
	if p, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); p == pid {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// state is the field after the ")" that closes the command name
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// stop sends SIGINT to pid and its session, waits up to grace for it to exit, then kills it.
// SIGINT, not SIGTERM: a ztunnel given SIGTERM keeps serving while it waits for a successor
// to hand its pods to; SIGINT makes it drain and exit at once (docs/operations.md).
func stop(pid int, grace time.Duration) error {
	if !alive(pid) {
		return nil
	}
	_ = syscall.Kill(-pid, syscall.SIGINT) // the session: `ip netns exec` and its child
	_ = syscall.Kill(pid, syscall.SIGINT)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		return fmt.Errorf("process %d does not exit", pid)
	}
	return nil
}

// strays returns the processes whose command line mentions dir: every process a lab
// starts carries its state dir in its arguments, so they are found after a crash too.
func strays(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if arg == dir || strings.HasPrefix(arg, dir+"/") || strings.HasPrefix(arg, "--lab-dir="+dir) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// waitFor polls check every 50 ms until it returns nil or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%s: not after %v: %w", what, timeout, last)
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
