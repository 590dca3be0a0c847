package clustertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const crashChildEnv = "AMBIT_CLUSTERTEST_CRASH_CHILD"

// TestCrashChild is the half of TestCrashRecovery that dies: run alone it does nothing.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		return
	}
	c := Start(t, Options{NoKubeProxy: true, Images: []string{"testapp"}})
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, echoPod(c, "orphan", c.Nodes[0].Name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitPodRunning(ctx, "default", "orphan"); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("READY %d %d\n", c.Slot, c.Nodes[0].Pid)
	time.Sleep(time.Hour) // killed here
}

// TestCrashRecovery kills a test binary whose cluster runs a pod, without any cleanup, and
// checks that what it left (the pod's shim and container survive it) is found and removed by
// Sweep, which every Start runs first.
func TestCrashRecovery(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("clustertest: needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, hostErr := os.Stat(filepath.Join(BaseDir(), "host.json"))
	dead := &Cluster{before: snapshotHost(ctx, nodeMountpoints), mountpoints: nodeMountpoints, recorded: errors.Is(hostErr, os.ErrNotExist)}

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var childOut strings.Builder
	cmd.Stderr = &childOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan [2]int, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			childOut.WriteString(line + "\n")
			var slot, pid int
			if n, _ := fmt.Sscanf(line, "READY %d %d", &slot, &pid); n == 2 {
				ready <- [2]int{slot, pid}
			}
		}
		close(ready)
	}()
	got, ok := <-ready
	if !ok {
		_ = cmd.Wait()
		t.Fatalf("the child's cluster did not come up:\n%s", childOut.String())
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	slot := got[0]
	dead.Slot, dead.StateDir, dead.cgroup, dead.Bridge = slot, slotDir(slot), slotCgroup(slot), bridgeName(slot)
	if ino, err := nsInode(got[1], "net"); err == nil {
		dead.holderIno = []uint64{ino}
	}
	// The container and its shim outlive the test binary (the shim is re-parented); so do the
	// bridge and the directory.
	time.Sleep(500 * time.Millisecond)
	left := dead.Leftovers()
	t.Logf("the dead test left %d things behind, e.g. %v", len(left), left[:min(len(left), 4)])
	if !strings.Contains(strings.Join(left, "\n"), "in cgroup "+slotCgroup(slot)) {
		t.Errorf("no process of the dead cluster left to sweep (want its pod's shim and container): %v", left)
	}

	begin := time.Now()
	if err := Sweep(); err != nil {
		t.Errorf("sweep: %v", err)
	}
	t.Logf("swept in %v", time.Since(begin).Round(10*time.Millisecond))
	if left := dead.Leftovers(); len(left) > 0 {
		t.Errorf("after the sweep, still left behind:\n  %s", strings.Join(left, "\n  "))
	}
}
