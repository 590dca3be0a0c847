package report

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteDrawings: each drawing lands in its file in turn; one that fails leaves its file
// as it was and ends the writing.
func TestWriteDrawings(t *testing.T) {
	dir := t.TempDir()
	draw := func(s string) func(io.Writer) error {
		return func(w io.Writer) error { _, err := io.WriteString(w, s); return err }
	}
	files, err := WriteDrawings(dir, Drawing{File: "a.png", Draw: draw("a")}, Drawing{File: "b.png", Draw: draw("b")})
	if err != nil || len(files) != 2 || files[1] != filepath.Join(dir, "b.png") {
		t.Fatalf("files %v, %v", files, err)
	}
	if b, err := os.ReadFile(files[0]); err != nil || string(b) != "a" {
		t.Fatalf("a.png: %q, %v", b, err)
	}
	boom := errors.New("boom")
	files, err = WriteDrawings(dir,
		Drawing{File: "c.png", Draw: draw("c")},
		Drawing{File: "b.png", Draw: func(w io.Writer) error { io.WriteString(w, "partial"); return boom }},
		Drawing{File: "d.png", Draw: draw("d")})
	if !errors.Is(err, boom) || len(files) != 1 {
		t.Fatalf("files %v, %v; want c.png written and boom", files, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b.png")); string(b) != "b" {
		t.Errorf("b.png after its drawing failed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "d.png")); !os.IsNotExist(err) {
		t.Errorf("d.png written after a failure: %v", err)
	}
}
