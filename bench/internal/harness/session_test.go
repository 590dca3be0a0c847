package harness

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// Every process the harness starts leads a session of its own, so that the kernel's
// autogroup scheduling gives it a group of its own as it does the lab's ztunnels; with
// ownSession removed, the child would be in the test's session and this fails.
func TestOwnSession(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	ownSession(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	pid := cmd.Process.Pid
	got, err := unix.Getsid(pid)
	if err != nil {
		t.Fatal(err)
	}
	if ours, _ := unix.Getsid(os.Getpid()); got != pid || got == ours {
		t.Fatalf("child %d is in session %d (the test's is %d); want a session of its own", pid, got, ours)
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		t.Fatal("no Pdeathsig: a child in its own session would outlive a killed harness")
	}
}
