package lab

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestNodeBinaryIsOwnCopy: each node gets its own executable copy of ztunnel (another
// inode, the same bytes), and a new copy replaces a node's file without touching the file
// a running ztunnel has open.
func TestNodeBinaryIsOwnCopy(t *testing.T) {
	bin := t.TempDir()
	src := filepath.Join(bin, "ztunnel")
	if err := os.WriteFile(src, []byte("first build"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := Options{Dir: t.TempDir(), BinDir: bin}
	a, err := nodeBinary(o, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := nodeBinary(o, "node-b")
	if err != nil {
		t.Fatal(err)
	}
	fa, _ := os.Stat(a)
	fb, _ := os.Stat(b)
	fs, _ := os.Stat(src)
	if a == b || os.SameFile(fa, fb) || os.SameFile(fa, fs) {
		t.Fatalf("nodes share a file: %s, %s (source %s)", a, b, src)
	}
	if fa.Mode().Perm()&0o100 == 0 {
		t.Fatalf("%s is not executable: %v", a, fa.Mode())
	}
	running, err := os.Open(a) // as a running ztunnel holds it
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	if err := os.WriteFile(src, []byte("second build"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeBinary(o, "node-a"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(a); !bytes.Equal(got, []byte("second build")) {
		t.Fatalf("node-a's copy holds %q after the new build", got)
	}
	var old bytes.Buffer
	if _, err := old.ReadFrom(running); err != nil || old.String() != "first build" {
		t.Fatalf("the running copy changed under it: %q, %v", old.String(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(a), "*.*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
