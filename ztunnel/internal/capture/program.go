package capture

import (
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// runProgram runs cmd to its end. It waits for the program's exit through the runtime's
// network poller (a pidfd), not in a waitid call that holds the proxy's thread: with one
// processor (mesh/maxprocs) and Go's system monitor kept awake (mesh/sysmon), a thread
// blocked in a system call keeps the processor until the monitor, asleep for up to 10 ms,
// takes it back, and every connection waits that long (docs/benchmarks.md). Where the
// kernel has no pidfd, or the poller does not take it, the wait is Go's own.
func runProgram(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	awaitExit(cmd.Process.Pid)
	return cmd.Wait() // reaps the exited program at once, and waits for its output's copies
}

// awaitExit returns once the child process pid has exited, without reaping it, or at once
// if that cannot be waited for through the poller.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	// A pidfd becomes readable when its process exits; Read calls the function again at
	// each readiness until it reports done. An error (not pollable) ends the wait too.
	_ = rc.Read(func(fd uintptr) bool { return exited(int(fd)) })
}

// exited reports whether the process of the pidfd has exited (or cannot be waited for),
// leaving it to be reaped.
func exited(pidfd int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err != nil || info.Signo != 0
}
