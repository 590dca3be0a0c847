package clustertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNodeNetnsHeldSkipsReusedInodes: a node's network namespace still held is a leftover,
// unless a process of another slot's cluster holds a namespace with the same inode number: the
// kernel reuses a freed namespace's number, so that namespace is the other cluster's (CI saw
// it: TestCrashRecovery's dead node's number came back to a node of a cluster starting beside).
func TestNodeNetnsHeldSkipsReusedInodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("clustertest: needs root (a network namespace in a cgroup)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("clustertest: no unshare: %v", err)
	}
	// Slots at and above MaxSlots are never swept by a concurrent Start.
	other, mine := MaxSlots+1, MaxSlots+2
	cg := slotCgroup(other)
	if err := cgroupCreate(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cgroupKill(cg, 5*time.Second)
		_ = cgroupRemove(cg, 5*time.Second)
	})
	holder, err := startProc("holder", filepath.Join(t.TempDir(), "holder.log"), cg, unshare,
		"--net", "--mount", "--propagation", "private", "--", "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.stop(time.Second) })
	pid := holder.cmd.Process.Pid
	// As a node's holder: up once sleep runs in namespaces of its own.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := (&Node{Pid: pid, holder: holder}).waitHolder(ctx); err != nil {
		t.Fatal(err)
	}
	ino, err := nsInode(pid, "net")
	if err != nil {
		t.Fatal(err)
	}

	if left := (&Cluster{Slot: mine, holderIno: []uint64{ino}}).nodeNetnsHeld(); len(left) != 0 {
		t.Errorf("a namespace held by slot %d's process counted as slot %d's leftover: %v", other, mine, left)
	}
	left := (&Cluster{Slot: other, holderIno: []uint64{ino}}).nodeNetnsHeld()
	if len(left) != 1 || !strings.Contains(left[0], "sleep 60") {
		t.Errorf("slot %d's own namespace still held: leftovers %v, want the holder", other, left)
	}
	if s, ok := pidSlot(pid); !ok || s != other {
		t.Errorf("pidSlot(%d) = %d, %v; want %d", pid, s, ok, other)
	}
	if s, ok := pidSlot(os.Getpid()); ok {
		t.Errorf("pidSlot(the test) = %d, want none", s)
	}
}
