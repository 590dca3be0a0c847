package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// These run last (file order): they take the shared lab down.

// TestLabUpIsIdempotent: lab up on a lab that is up keeps it, processes and all.
func TestLabUpIsIdempotent(t *testing.T) {
	e2eLab(t)
	st, err := LoadState(e2eOpts.Dir) // as recorded: earlier tests replaced processes
	if err != nil {
		t.Fatal(err)
	}
	if why := unhealthy(st); why != "" {
		t.Fatalf("the lab is not healthy before lab up: %s", why)
	}
	topo, err := LoadTopology("testdata/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	again, err := Up(context.Background(), topo, e2eOpts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Controller.PID != st.Controller.PID || again.Nodes[0].Ztunnel.PID != st.Nodes[0].Ztunnel.PID {
		t.Fatalf("lab up on a running lab restarted it: controller %d → %d, ztunnel %d → %d",
			st.Controller.PID, again.Controller.PID, st.Nodes[0].Ztunnel.PID, again.Nodes[0].Ztunnel.PID)
	}
}

// TestLabDownAfterCrash kills every lab process with SIGKILL and loses state.json, as a
// crash of the machine's session would; lab down still removes every process, namespace and
// link, found by the state dir in their arguments and the prefix in their names.
func TestLabDownAfterCrash(t *testing.T) {
	e2eLab(t)
	st, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	// Crash: the ztunnels and the controller die without cleaning up; apps live on.
	for _, n := range st.Nodes {
		_ = syscall.Kill(n.Ztunnel.PID, syscall.SIGKILL)
	}
	_ = syscall.Kill(st.Controller.PID, syscall.SIGKILL)
	if err := os.Remove(filepath.Join(e2eOpts.Dir, "state.json")); err != nil {
		t.Fatal(err)
	}
	if len(strays(e2eOpts.Dir)) == 0 {
		t.Fatal("no process of the lab left to find: the test would prove nothing")
	}
	if err := Down(context.Background(), Options{Dir: e2eOpts.Dir, Prefix: e2ePrefix}); err != nil {
		t.Fatal(err)
	}
	e2eState = nil // taken down here, not in TestMain
	if left := strays(e2eOpts.Dir); len(left) > 0 {
		t.Fatalf("processes left after lab down: %v", left)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), e2ePrefix+"-") {
		t.Fatalf("namespaces left after lab down:\n%s", out)
	}
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	if strings.Contains(string(links), e2ePrefix) {
		t.Fatalf("links left after lab down:\n%s", links)
	}
	if _, err := os.Stat(e2eOpts.Dir); !os.IsNotExist(err) {
		t.Fatalf("state dir left after lab down: %v", err)
	}
}
