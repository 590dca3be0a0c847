package gobuild

import (
	"bytes"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildIsStaticAndTrimmed builds a small command in a module of its own and checks the
// binary as the images have it: no dynamic loader (cgo off) and no trace of the directory it
// was built in (-trimpath).
func TestBuildIsStaticAndTrimmed(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.test/hello\n\ngo 1.26\n",
		// net and os/user pick cgo when it is on: this one would be linked dynamically.
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\t\"net\"\n\t\"os/user\"\n)\n\nfunc main() {\n\tu, _ := user.Current()\n\t_, err := net.LookupHost(\"localhost\")\n\tfmt.Println(u, err)\n}\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "hello")
	if err := Build(dir, out, []string{"GOWORK=off", "GOFLAGS=-mod=mod"}, "."); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary asks for a dynamic loader: built with cgo")
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(dir)) {
		t.Errorf("the binary holds its build directory %s: built without -trimpath", dir)
	}
}

// TestBuildReportsTheCompiler: a package that does not build is an error that says why.
func TestBuildReportsTheCompiler(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.test/broken\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { undefinedThing() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Build(dir, filepath.Join(dir, "out"), []string{"GOWORK=off"}, ".")
	if err == nil || !strings.Contains(err.Error(), "undefinedThing") {
		t.Fatalf("Build of a broken package: %v, want the compiler's complaint about undefinedThing", err)
	}
	if err := Build(dir, filepath.Join(dir, "out"), nil); err == nil {
		t.Fatal("Build with no packages succeeded")
	}
}

// TestFlagsAreTheScripts checks that Build compiles with the flags every static build of
// the project uses (hack/goflags.sh): with other flags, a test's binaries would compile the
// whole tree once more instead of reusing what `make images` compiled.
func TestFlagsAreTheScripts(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "hack", "goflags.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var script []string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "static_flags=("); ok {
			script = strings.Fields(strings.TrimSuffix(strings.TrimSpace(v), ")"))
		}
	}
	if script == nil {
		t.Fatal("hack/goflags.sh sets no static_flags=(...)")
	}
	if strings.Join(script, " ") != strings.Join(Flags, " ") {
		t.Fatalf("hack/goflags.sh's static_flags are %q, gobuild.Flags %q: one of them changed alone", script, Flags)
	}
}
