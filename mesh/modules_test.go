package mesh

import (
	"bufio"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// allowed lists, for each module of the repository, the ambit modules its packages may
// import (its own is always allowed). A module not listed here fails the test: a new module
// must take a place in the rules.
var allowed = map[string][]string{
	"ambit.dev/proto":         {},
	"ambit.dev/mesh":          {"ambit.dev/proto"},
	"ambit.dev/ztunnel":       {"ambit.dev/proto", "ambit.dev/mesh"},
	"ambit.dev/waypoint":      {"ambit.dev/proto", "ambit.dev/mesh"},
	"ambit.dev/controller":    {"ambit.dev/proto", "ambit.dev/mesh"},
	"ambit.dev/node":          {"ambit.dev/proto", "ambit.dev/mesh"},
	"ambit.dev/bench":         {"ambit.dev/proto", "ambit.dev/mesh", "ambit.dev/controller", "ambit.dev/ztunnel", "ambit.dev/waypoint"},
	"ambit.dev/compat/istio":  {"ambit.dev/proto", "ambit.dev/mesh"},
	"ambit.dev/tools/codegen": {},
	"ambit.dev/tools/kube":    {},
	"ambit.dev/tools/images":  {},
}

// TestModuleRules checks every Go file of the repository against the module rules.
func TestModuleRules(t *testing.T) {
	bad, err := moduleViolations("..", allowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range bad {
		t.Error(v)
	}
}

// TestModuleRulesCatchForbiddenImports shows that the check fails, naming the file and the
// offending import path, for each kind of arrow the rules forbid.
func TestModuleRulesCatchForbiddenImports(t *testing.T) {
	root := t.TempDir()
	write := func(path, body string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []string{"proto", "mesh", "ztunnel", "waypoint", "controller"} {
		write(m+"/go.mod", "module ambit.dev/"+m+"\n\ngo 1.26\n")
	}
	write("proto/dump/dump.go", "package dump\n\nimport _ \"ambit.dev/mesh/hbone\"\n")
	write("ztunnel/internal/app/app.go", "package app\n\nimport (\n\t_ \"ambit.dev/proto/dump\"\n\t_ \"ambit.dev/waypoint/internal/proxy\"\n)\n")
	write("waypoint/internal/x/x_test.go", "package x\n\nimport _ \"ambit.dev/controller/lab\"\n")
	write("controller/internal/cli/cli.go", "package cli\n\nimport (\n\t\"fmt\"\n\t_ \"ambit.dev/ztunnel/internal/proxy\"\n\t_ \"ambit.dev/mesh/identity\"\n)\n")
	write("controller/testdata/ignored.go", "package ignored\n\nimport _ \"ambit.dev/ztunnel/x\"\n")
	write("mesh/hbone/hbone.go", "package hbone\n\nimport _ \"ambit.dev/proto/dump\"\n")

	bad, err := moduleViolations(root, allowed)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"controller/internal/cli/cli.go: ambit.dev/controller imports ambit.dev/ztunnel/internal/proxy",
		"proto/dump/dump.go: ambit.dev/proto imports ambit.dev/mesh/hbone",
		"waypoint/internal/x/x_test.go: ambit.dev/waypoint imports ambit.dev/controller/lab",
		"ztunnel/internal/app/app.go: ambit.dev/ztunnel imports ambit.dev/waypoint/internal/proxy",
	}
	var got []string
	for _, v := range bad {
		got = append(got, strings.SplitN(v, " (", 2)[0])
	}
	if !slices.Equal(got, want) {
		t.Fatalf("violations:\n%s\nwant:\n%s", strings.Join(bad, "\n"), strings.Join(want, "\n"))
	}

	write("bench/go.mod", "module ambit.dev/unlisted\n\ngo 1.26\n")
	if _, err := moduleViolations(root, allowed); err == nil || !strings.Contains(err.Error(), "ambit.dev/unlisted") {
		t.Fatalf("a module without rules must fail the check, got %v", err)
	}
}

// moduleViolations walks every Go file below root (test files included, testdata and hidden
// directories left out), finds the module each belongs to (the nearest go.mod), and returns
// one line per import of an ambit module its rules do not allow, sorted.
func moduleViolations(root string, rules map[string][]string) ([]string, error) {
	modules := map[string]string{} // directory (relative to root) → module path
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		switch {
		case d.Name() == "go.mod":
			mod, err := modulePath(path)
			if err != nil {
				return err
			}
			if _, ok := rules[mod]; !ok {
				return fmt.Errorf("%s: module %s has no place in the module rules", rel, mod)
			}
			modules[filepath.Dir(rel)] = mod
		case strings.HasSuffix(d.Name(), ".go"):
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []string
	fset := token.NewFileSet()
	for _, rel := range files {
		mod := owner(rel, modules)
		if mod == "" {
			continue // not inside any module (a script-like file): nothing imports it
		}
		f, err := parser.ParseFile(fset, filepath.Join(root, rel), nil, parser.ImportsOnly)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", rel, err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !strings.HasPrefix(p, "ambit.dev/") || within(p, mod) {
				continue
			}
			if !slices.ContainsFunc(rules[mod], func(m string) bool { return within(p, m) }) {
				out = append(out, fmt.Sprintf("%s: %s imports %s (it may import only %s)",
					filepath.ToSlash(rel), mod, p, strings.Join(append([]string{mod}, rules[mod]...), ", ")))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// owner is the module of the nearest go.mod above the file rel.
func owner(rel string, modules map[string]string) string {
	for dir := filepath.Dir(rel); ; dir = filepath.Dir(dir) {
		if m, ok := modules[dir]; ok {
			return m
		}
		if dir == "." || dir == "/" {
			return ""
		}
	}
}

// within reports whether the import path p is module mod or one of its packages.
func within(p, mod string) bool { return p == mod || strings.HasPrefix(p, mod+"/") }

func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	return "", fmt.Errorf("%s: no module line", gomod)
}
