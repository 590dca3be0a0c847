package clustertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ambit.dev/controller/internal/kubetest"
)

// TestImagesReproducible builds every image twice (hack/images.sh, as `make images` does) and
// checks the digests are the same, and that every part the harness and the later node agent
// rely on is there.
func TestImagesReproducible(t *testing.T) {
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var lists []string
	for _, out := range []string{"a", "b"} {
		dir := filepath.Join(t.TempDir(), out)
		cmd := exec.Command(filepath.Join(root, "hack", "images.sh"), "--out", dir, "--version", "reproducible")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("hack/images.sh: %v\n%s", err, b)
		}
		b, err := os.ReadFile(filepath.Join(dir, "images.txt"))
		if err != nil {
			t.Fatal(err)
		}
		lists = append(lists, string(b))
	}
	if lists[0] != lists[1] {
		t.Errorf("two builds of the same tree differ:\n%s\n%s", lists[0], lists[1])
	}
	for _, part := range []string{"controller", "ztunnel", "waypoint", "testapp", "pause"} {
		if !strings.Contains(lists[0], "ambit.dev/"+part+":reproducible sha256:") {
			t.Errorf("no image of %s in\n%s", part, lists[0])
		}
	}
}
