package capture

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRunProgramReportsExitAndOutput(t *testing.T) {
	var out bytes.Buffer
	cmd := exec.Command("sh", "-c", "echo hello; exit 3")
	cmd.Stdout = &out
	err := runProgram(cmd)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("runProgram: %v, want exit status 3", err)
	}
	if out.String() != "hello\n" {
		t.Fatalf("output %q, want %q", out.String(), "hello\n")
	}
	if err := runProgram(exec.Command("true")); err != nil {
		t.Fatalf("runProgram(true): %v", err)
	}
	if err := runProgram(exec.Command("/nonexistent/program")); err == nil {
		t.Fatal("runProgram of a missing program: no error")
	}
}

// While the program runs, no thread of this process may be blocked in waitid: the wait is
// the poller's (epoll), which holds no processor.
func TestRunProgramWaitsWithoutBlockingAThread(t *testing.T) {
	if _, err := unix.PidfdOpen(os.Getpid(), 0); err != nil {
		t.Skipf("this kernel has no pidfd (%v): runProgram falls back to Go's own wait", err)
	}
	done := make(chan error, 1)
	go func() { done <- runProgram(exec.Command("sleep", "0.5")) }()
	waiting := false
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		n, err := threadsInSyscall(unix.SYS_WAITID)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			waiting = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatalf("runProgram(sleep): %v", err)
	}
	if waiting {
		t.Fatal("a thread was blocked in waitid while the program ran")
	}
	// The check itself can see such a thread: Go's own wait blocks one.
	cmd := exec.Command("sleep", "0.5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	seen := false
	for range 40 {
		if n, _ := threadsInSyscall(unix.SYS_WAITID); n > 0 {
			seen = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-done
	if !seen {
		t.Fatal("Go's own wait was not seen in waitid: the check cannot tell")
	}
}

// threadsInSyscall counts this process's threads blocked in system call nr (/proc/self/task/*/syscall).
func threadsInSyscall(nr int) (int, error) {
	tasks, err := filepath.Glob("/proc/self/task/*/syscall")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread has gone
		}
		f := strings.Fields(string(b))
		if len(f) > 0 && f[0] == strconv.Itoa(nr) {
			n++
		}
	}
	return n, nil
}
