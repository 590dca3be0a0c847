package cli

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

const docPath = "../../../docs/ambitctl.md"

// docCommand is one command line of docs/ambitctl.md with the output shown under it, if any.
type docCommand struct {
	line   int
	args   []string
	output string
	shown  bool // from a console block: the output after it is what it prints
}

// docCommands returns the commands of the doc's ```sh and ```console blocks.
func docCommands(t *testing.T) []*docCommand {
	t.Helper()
	f, err := os.Open(docPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*docCommand
	var block string // "", "sh", "console" or "other"
	var last *docCommand
	s := bufio.NewScanner(f)
	for n := 1; s.Scan(); n++ {
		l := s.Text()
		if strings.HasPrefix(l, "```") {
			switch {
			case block != "":
				block, last = "", nil
			case l == "```sh" || l == "```console":
				block = strings.TrimPrefix(l, "```")
			default:
				block = "other"
			}
			continue
		}
		switch block {
		case "sh":
			if i := strings.Index(l, " #"); i >= 0 {
				l = l[:i]
			}
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, &docCommand{line: n, args: strings.Fields(l)})
			}
		case "console":
			if cmd, ok := strings.CutPrefix(l, "$ "); ok {
				last = &docCommand{line: n, args: strings.Fields(cmd), shown: true}
				out = append(out, last)
			} else if last != nil {
				last.output += l + "\n"
			}
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDocCommands runs the config-folder walkthrough of docs/ambitctl.md and compares what
// it prints; every other ambitctl command there (they need a lab or a cluster), the lab's
// own included, must parse: an existing command, known flags, the right number of arguments.
func TestDocCommands(t *testing.T) {
	cmds := docCommands(t)
	if len(cmds) < 20 {
		t.Fatalf("only %d commands found in %s", len(cmds), docPath)
	}
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "ambit-config")
	orig, err := os.ReadFile("../../../examples/lab-config/namespace.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, c := range cmds {
		switch {
		case c.args[0] == "cp":
			if strings.Join(c.args, " ") != "cp -r examples/lab-config /tmp/ambit-config" {
				t.Fatalf("line %d: unexpected command %v", c.line, c.args)
			}
			copyDir(t, "../../../examples/lab-config", cfg)
			continue
		case c.args[0] != "ambitctl" && c.args[0] != "bin/ambitctl": // as on the PATH, or as built
			t.Errorf("line %d: not an ambitctl command: %v", c.line, c.args)
			continue
		}
		args := c.args[1:]
		if c.shown && strings.Contains(strings.Join(args, " "), "--config-dir /tmp/ambit-config") {
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "/tmp/ambit-config", cfg)
			}
			out, err := run(t, Options{}, append(args, "--lab-dir", noLab(t))...)
			if err != nil {
				t.Fatalf("line %d: %v", c.line, err)
			}
			if want := strings.ReplaceAll(c.output, "/tmp/ambit-config", cfg); out != want {
				t.Fatalf("line %d %v:\n got %q\nwant %q", c.line, c.args, out, want)
			}
			ran++
			continue
		}
		root := &cobra.Command{Use: "ambitctl"}
		AddCommands(root, Options{})
		cmd, rest, err := root.Find(args)
		if err != nil || cmd == root || !cmd.Runnable() {
			t.Errorf("line %d: %v: no such command (%v)", c.line, c.args, err)
			continue
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("line %d: %v: %v", c.line, c.args, err)
			continue
		}
		if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
			t.Errorf("line %d: %v: %v", c.line, c.args, err)
		}
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
