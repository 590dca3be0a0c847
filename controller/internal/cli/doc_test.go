package cli

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"ambit.dev/controller/internal/cli/clidocs"
)

const repoRoot = "../../.."

func newRoot() *cobra.Command {
	root := &cobra.Command{Use: "ambitctl"}
	AddCommands(root, Options{})
	return root
}

// docFiles are the files whose ambitctl commands must exist: README.md, docs/*.md and the
// comments of examples/.
func docFiles(t *testing.T) (markdown, examples []string) {
	t.Helper()
	markdown, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	markdown = append([]string{filepath.Join(repoRoot, "README.md")}, markdown...)
	err = filepath.WalkDir(filepath.Join(repoRoot, "examples"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			examples = append(examples, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return markdown, examples
}

// parseDoc returns the commands of one file, named relative to the repository root.
func parseDoc(t *testing.T, path string) []*clidocs.Command {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	name, _ := filepath.Rel(repoRoot, path)
	if strings.HasSuffix(path, ".md") {
		return clidocs.Parse(name, src)
	}
	return clidocs.ParseComments(name, src)
}

// TestDocsNameRealCommands: every ambitctl command of README.md, docs/*.md and the comments
// of examples/ (in ```sh and ```console blocks and in inline code spans) is an existing
// command with known flags and a valid number of arguments, written bin/ambitctl. The lab's
// own, which need a running lab, are also run by controller/lab's TestLabDocCommands.
func TestDocsNameRealCommands(t *testing.T) {
	markdown, examples := docFiles(t)
	checked := map[string]int{}
	for _, path := range append(markdown, examples...) {
		for _, c := range parseDoc(t, path) {
			if !c.Ambitctl() {
				continue
			}
			if err := clidocs.Check(newRoot, c); err != nil {
				t.Error(err)
			}
			checked[c.File]++
		}
	}
	// The files known to show commands, so that a parser that finds nothing fails.
	for file, least := range map[string]int{"docs/ambitctl.md": 30, "docs/lab.md": 12, "docs/waypoint.md": 3, "README.md": 1, "examples/lab.yaml": 3} {
		if checked[file] < least {
			t.Errorf("%s: %d ambitctl commands found, want at least %d", file, checked[file], least)
		}
	}
}

// TestDocCheckCatchesDrift: a doc that names a command, flag or argument count that does not
// exist, or a bare ambitctl, fails, naming its file and line.
func TestDocCheckCatchesDrift(t *testing.T) {
	doc := "# fake\n" + // 1
		"```sh\n" + // 2
		"bin/ambitctl proxy-status --lab   # fine\n" + // 3
		"bin/ambitctl proxy-status --no-such-flag\n" + // 4
		"sudo bin/ambitctl lab frobnicate\n" + // 5
		"```\n" + // 6
		"Run `bin/ambitctl namespace enable` to enrol, or `bin/ambitctl\n" + // 7
		"ztunnel-config workloads --node node-a` (fine, across lines), or `ambitctl lab status`.\n" + // 8
		"```console\n" + // 9
		"$ bin/ambitctl lab call demo/client\n" + // 10
		"some output\n" + // 11
		"$ bin/ambitctl nosuchcommand\n" + // 12
		"```\n" + // 13
		"```text\n" + // 14
		"bin/ambitctl not-a-command-in-a-text-block\n" + // 15
		"```\n" + // 16
		"```\n" + // 17
		"bin/ambitctl waypoint status --all # a block without a language counts\n" + // 18
		"ambitctl: an error message does not\n" + // 19
		"```\n" // 20
	var got []string
	for _, c := range clidocs.Parse("fake.md", []byte(doc)) {
		if err := clidocs.Check(newRoot, c); err != nil {
			got = append(got, err.Error())
		}
	}
	slices.Sort(got)
	want := []string{
		"fake.md:10: `bin/ambitctl lab call demo/client`: ambitctl lab call: accepts 2 arg(s), received 1",
		"fake.md:12: `bin/ambitctl nosuchcommand`: unknown command \"nosuchcommand\" for \"ambitctl\"",
		"fake.md:18: `bin/ambitctl waypoint status --all`: ambitctl waypoint status: unknown flag: --all",
		"fake.md:4: `bin/ambitctl proxy-status --no-such-flag`: ambitctl proxy-status: unknown flag: --no-such-flag",
		"fake.md:5: `bin/ambitctl lab frobnicate`: ambitctl lab has no command \"frobnicate\"",
		"fake.md:7: `bin/ambitctl namespace enable`: ambitctl namespace enable: accepts 1 arg(s), received 0",
		"fake.md:8: `ambitctl lab status`: write bin/ambitctl, where make build puts it (ambitctl is not on the PATH)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// An example file's comments are checked alike.
	yaml := "# Apply it with\n#   ambitctl lab apply -f x.yaml\n# and `bin/ambitctl lab delete -f x.yaml --bogus`.\nkind: Namespace\n"
	got = nil
	for _, c := range clidocs.ParseComments("x.yaml", []byte(yaml)) {
		if err := clidocs.Check(newRoot, c); err != nil {
			got = append(got, err.Error())
		}
	}
	want = []string{
		"x.yaml:2: `ambitctl lab apply -f x.yaml`: write bin/ambitctl, where make build puts it (ambitctl is not on the PATH)",
		"x.yaml:3: `bin/ambitctl lab delete -f x.yaml --bogus`: ambitctl lab delete: unknown flag: --bogus",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDocCommands runs the config-folder walkthrough of docs/ambitctl.md and compares what
// it prints.
func TestDocCommands(t *testing.T) {
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "ambit-config")
	orig, err := os.ReadFile(filepath.Join(repoRoot, "examples/lab-config/namespace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, c := range parseDoc(t, filepath.Join(repoRoot, "docs/ambitctl.md")) {
		switch {
		case c.Block == "":
			continue
		case c.Args[0] == "cp":
			if strings.Join(c.Args, " ") != "cp -r examples/lab-config /tmp/ambit-config" {
				t.Fatalf("%s: unexpected command", c)
			}
			copyDir(t, filepath.Join(repoRoot, "examples/lab-config"), cfg)
			continue
		case !c.Ambitctl():
			t.Errorf("%s: not an ambitctl command", c)
			continue
		}
		args := slices.Clone(c.Args[1:])
		if c.Block != "console" || !strings.Contains(strings.Join(args, " "), "--config-dir /tmp/ambit-config") {
			continue // checked by TestDocsNameRealCommands; the lab's run by TestLabDocCommands
		}
		for i, a := range args {
			args[i] = strings.ReplaceAll(a, "/tmp/ambit-config", cfg)
		}
		out, err := run(t, Options{}, append(args, "--lab-dir", noLab(t))...)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if want := strings.ReplaceAll(c.Output, "/tmp/ambit-config", cfg); out != want {
			t.Fatalf("%s:\n got %q\nwant %q", c, out, want)
		}
		ran++
	}
	if ran < 5 {
		t.Fatalf("ran %d walkthrough commands, want 5", ran)
	}
	// As the doc says: disable and enable leave namespace.yaml as it was.
	if got, err := os.ReadFile(filepath.Join(cfg, "namespace.yaml")); err != nil || string(got) != string(orig) {
		t.Fatalf("namespace.yaml after the walkthrough (%v):\n%s", err, got)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}
