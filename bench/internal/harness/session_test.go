package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// sessionOf reads the session id of pid from /proc (stat's sixth field, after the command
// name in parentheses).
func sessionOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	sid, err := strconv.Atoi(f[3]) // state, ppid, pgrp, session
	if err != nil {
		t.Fatalf("session in %q: %v", s, err)
	}
	return sid
}

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
	if got, ours := sessionOf(t, pid), sessionOf(t, os.Getpid()); got != pid || got == ours {
		t.Fatalf("child %d is in session %d (the test's is %d); want a session of its own", pid, got, ours)
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		t.Fatal("no Pdeathsig: a child in its own session would outlive a killed harness")
	}
}
