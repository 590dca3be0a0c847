package cli

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"ambit.dev/mesh/gobuild"
)

// helpFlag is one flag as a Go program's --help prints it.
type helpFlag struct {
	name, def string // def is "" when --help names no default (a zero value)
}

var (
	helpFlagLine = regexp.MustCompile(`^  -([a-z0-9-]+)`)
	helpDefault  = regexp.MustCompile(`\(default (?:"([^"]*)"|([^)]*))\)$`)
	docFlagRow   = regexp.MustCompile("^\\| `--([a-z0-9-]+)` \\|([^|]*)\\|")
)

// parseHelp reads the flags of a flag package's usage output.
func parseHelp(out string) []helpFlag {
	var flags []helpFlag
	for _, line := range strings.Split(out, "\n") {
		if m := helpFlagLine.FindStringSubmatch(line); m != nil {
			flags = append(flags, helpFlag{name: m[1]})
			continue
		}
		if len(flags) > 0 && strings.HasPrefix(line, "    \t") {
			if m := helpDefault.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				flags[len(flags)-1].def = m[1] + m[2]
			}
		}
	}
	return flags
}

// docFlagRows returns the `| `--flag` | default |` rows of path's markdown between the
// heading section (a line equal to it; "" for the start) and the next heading of its level.
func docFlagRows(t *testing.T, path, section string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := map[string]string{}
	in := section == ""
	level := strings.SplitN(section, " ", 2)[0] + " "
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case section != "" && line == section:
			in = true
			continue
		case in && section != "" && strings.HasPrefix(line, level):
			in = false
		}
		if m := docFlagRow.FindStringSubmatch(line); in && m != nil {
			rows[m[1]] = strings.TrimSpace(m[2])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// flagDocProblems compares a command's --help with its flags table: a row for every flag,
// no row for a flag the command does not have, and the default --help gives in the row.
func flagDocProblems(cmd, doc string, help []helpFlag, rows map[string]string) []string {
	var problems []string
	known := map[string]bool{}
	for _, f := range help {
		known[f.name] = true
		row, ok := rows[f.name]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s has no row for %s's --%s", doc, cmd, f.name))
			continue
		}
		if f.def != "" && strings.Trim(row, "` ") != f.def {
			problems = append(problems, fmt.Sprintf("%s: %s's --%s defaults to %q, the row says %s", doc, cmd, f.name, f.def, row))
		}
	}
	for name := range rows {
		if !known[name] {
			problems = append(problems, fmt.Sprintf("%s has a row for --%s, which %s does not have", doc, name, cmd))
		}
	}
	slices.Sort(problems)
	return problems
}

// TestFlagTablesMatchHelp: the flags tables of docs/operations.md (ztunnel) and
// docs/waypoint.md list every flag the built commands have, with the defaults --help gives.
func TestFlagTablesMatchHelp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds ztunnel and the waypoint")
	}
	bin := t.TempDir()
	if err := gobuild.Build(repoRoot, bin+"/", nil, "ambit.dev/ztunnel/cmd/ztunnel", "ambit.dev/waypoint/cmd/waypoint"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ cmd, doc, section string }{
		{"ztunnel", "docs/operations.md", "## ztunnel"},
		{"waypoint", "docs/waypoint.md", ""},
	} {
		// --help prints the usage on standard error and exits 0.
		out, err := exec.Command(filepath.Join(bin, c.cmd), "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --help: %v\n%s", c.cmd, err, out)
		}
		help := parseHelp(string(out))
		if len(help) < 10 {
			t.Fatalf("%s --help: read %d flags, expected its whole list:\n%s", c.cmd, len(help), out)
		}
		for _, p := range flagDocProblems(c.cmd, c.doc, help, docFlagRows(t, filepath.Join(repoRoot, c.doc), c.section)) {
			t.Error(p)
		}
	}
}

// TestFlagDocCheckCatchesDrift: the comparison finds a missing row, a row for no flag and a
// wrong default, and reads --help's quoted and bare defaults.
func TestFlagDocCheckCatchesDrift(t *testing.T) {
	help := parseHelp("usage: x [flags]\n\n  -addr string\n    \tlisten address (default \":15008\")\n  -grace duration\n    \thow long (default 5s)\n  -name string\n    \tthe name\n")
	want := []helpFlag{{"addr", ":15008"}, {"grace", "5s"}, {"name", ""}}
	if !slices.Equal(help, want) {
		t.Fatalf("parseHelp = %v, want %v", help, want)
	}
	rows := map[string]string{"addr": "`:15008`", "grace": "`10s`", "gone": "`1`"}
	got := flagDocProblems("x", "doc.md", help, rows)
	wantProblems := []string{
		`doc.md has a row for --gone, which x does not have`,
		`doc.md has no row for x's --name`,
		"doc.md: x's --grace defaults to \"5s\", the row says `10s`",
	}
	if !slices.Equal(got, wantProblems) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantProblems, "\n"))
	}
	if p := flagDocProblems("x", "doc.md", help, map[string]string{"addr": "`:15008`", "grace": "`5s`", "name": "(required)"}); len(p) != 0 {
		t.Fatalf("a table that matches: %v", p)
	}
}
