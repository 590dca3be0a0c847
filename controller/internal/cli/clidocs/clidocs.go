// Package clidocs finds the ambitctl command lines that ambit's docs show — in ```sh and
// ```console blocks, in inline code spans and in the comments of example YAML files — and
// checks each against ambitctl's command tree: an existing command, known flags, the right
// number of arguments, written as bin/ambitctl (where `make build` puts it; ambitctl is not on
// the PATH). The tests of controller/internal/cli check every doc with it, and the lab's
// end-to-end tests run the lab commands it finds, so that the docs cannot drift from the CLI.
package clidocs

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Program is how the docs write ambitctl.
const Program = "bin/ambitctl"

// Command is one command line of a doc.
type Command struct {
	File string
	Line int
	// Args is the command split into words as a shell would (quotes removed), program first;
	// a leading sudo and VAR=value assignments are left out, and so is a "…" placeholder and
	// what follows it.
	Args []string
	// Block is "sh" or "console" for a line of a fenced block, "" for an inline code span or
	// a comment.
	Block string
	// Output is, in a console block, what the doc shows the command printing.
	Output string
}

// Ambitctl reports whether the command runs ambitctl, written either way.
func (c *Command) Ambitctl() bool {
	return len(c.Args) > 0 && (c.Args[0] == Program || c.Args[0] == "ambitctl")
}

func (c *Command) String() string {
	return fmt.Sprintf("%s:%d: `%s`", c.File, c.Line, strings.Join(c.Args, " "))
}

// Parse returns the command lines of a markdown file: every command of its ```sh and
// ```console blocks (in console blocks, the lines after "$ "), whatever its program, the
// lines of blocks without a language that start with ambitctl or bin/ambitctl, and the
// inline code spans outside blocks that do.
func Parse(file string, src []byte) []*Command {
	var out []*Command
	var block string // "", "sh", "console" or "other"
	var last *Command
	var cont strings.Builder // a sh line continued with a backslash
	contLine := 0
	var prose []string // lines outside blocks, "" for a line inside one
	s := bufio.NewScanner(bytes.NewReader(src))
	s.Buffer(nil, 1<<20)
	for n := 1; s.Scan(); n++ {
		l := s.Text()
		if fence := strings.TrimSpace(l); strings.HasPrefix(fence, "```") {
			prose = append(prose, "")
			switch {
			case block != "":
				block, last = "", nil
			case fence == "```sh" || fence == "```console":
				block = strings.TrimPrefix(fence, "```")
			case fence == "```":
				block = "plain"
			default:
				block = "other"
			}
			continue
		}
		if block == "" {
			prose = append(prose, l)
			continue
		}
		prose = append(prose, "")
		if block == "plain" {
			// A block without a language: only its ambitctl commands, as if it were sh.
			if t := strings.TrimSpace(l); isAmbitctl(t) {
				if i := strings.Index(t, " #"); i >= 0 {
					t = t[:i]
				}
				for _, args := range commands(t) {
					out = append(out, &Command{File: file, Line: n, Args: args, Block: "sh"})
				}
			}
			continue
		}
		switch block {
		case "sh":
			if cont.Len() == 0 {
				contLine = n
			}
			if i := strings.Index(l, " #"); i >= 0 || strings.HasPrefix(strings.TrimSpace(l), "#") {
				l = l[:max(i, 0)]
			}
			if t, ok := strings.CutSuffix(strings.TrimRight(l, " "), `\`); ok {
				cont.WriteString(t + " ")
				continue
			}
			cont.WriteString(l)
			for _, args := range commands(cont.String()) {
				out = append(out, &Command{File: file, Line: contLine, Args: args, Block: "sh"})
			}
			cont.Reset()
		case "console":
			if cmd, ok := strings.CutPrefix(l, "$ "); ok {
				last = nil
				for _, args := range commands(cmd) {
					c := &Command{File: file, Line: n, Args: args, Block: "console"}
					out = append(out, c)
					last = c // the output is the last command's
				}
			} else if last != nil {
				last.Output += l + "\n"
			}
		}
	}
	return append(out, spans(file, prose)...)
}

// ParseComments returns the ambitctl command lines of a YAML (or shell) file's # comments: a
// comment that starts with ambitctl or bin/ambitctl, and inline code spans that do.
func ParseComments(file string, src []byte) []*Command {
	var out []*Command
	var prose []string
	for n, l := range strings.Split(string(src), "\n") {
		_, text, ok := strings.Cut(l, "#")
		if !ok {
			prose = append(prose, "")
			continue
		}
		prose = append(prose, text)
		if t := strings.TrimSpace(text); isAmbitctl(t) && !strings.Contains(t, "`") {
			if i := strings.Index(t, " #"); i >= 0 {
				t = t[:i]
			}
			for _, args := range commands(t) {
				out = append(out, &Command{File: file, Line: n + 1, Args: args})
			}
		}
	}
	return append(out, spans(file, prose)...)
}

func isAmbitctl(s string) bool {
	s = strings.TrimPrefix(s, "sudo ")
	return strings.HasPrefix(s, "ambitctl ") || strings.HasPrefix(s, Program+" ")
}

// spans returns the inline code spans of lines (one string per line of the file, "" inside
// blocks) that are ambitctl commands. A span may continue on the next line, as in markdown,
// but not across a blank one.
func spans(file string, lines []string) []*Command {
	var out []*Command
	var span strings.Builder
	in, start := false, 0
	for i, l := range lines {
		if strings.TrimSpace(l) == "" {
			in = false
			span.Reset()
			continue
		}
		for _, r := range l {
			switch {
			case r == '`' && !in:
				in, start = true, i+1
				span.Reset()
			case r == '`':
				in = false
				if t := strings.ReplaceAll(span.String(), `\|`, "|"); isAmbitctl(t) {
					for _, args := range commands(t) {
						out = append(out, &Command{File: file, Line: start, Args: args})
					}
				}
			case in:
				span.WriteRune(r)
			}
		}
		if in {
			span.WriteByte(' ')
		}
	}
	return out
}

// commands splits a shell line into its commands (at |, && and ;) and each into words,
// leaving out sudo and variable assignments before the program.
func commands(line string) [][]string {
	var out [][]string
	var args []string
	var word strings.Builder
	inWord := false
	var quote rune
	flushWord := func() {
		if inWord {
			args = append(args, word.String())
		}
		word.Reset()
		inWord = false
	}
	flushCmd := func() {
		flushWord()
		for len(args) > 0 && (args[0] == "sudo" || strings.Contains(args[0], "=") && !strings.HasPrefix(args[0], "-")) {
			args = args[1:]
		}
		for i, a := range args {
			if a == "…" || a == "..." {
				args = args[:i]
				break
			}
		}
		if len(args) > 0 {
			out = append(out, args)
		}
		args = nil
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			word.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			flushWord()
		case r == ';' || r == '|':
			flushCmd()
			if i+1 < len(rs) && rs[i+1] == r {
				i++ // || ;;
			}
		case r == '&' && i+1 < len(rs) && rs[i+1] == '&':
			flushCmd()
			i++
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	flushCmd()
	return out
}

// Check resolves an ambitctl command in the tree newRoot builds (a fresh one for each call:
// parsing flags changes a tree) and returns an error, naming the doc's file and line, when
// the command or one of its flags does not exist, its arguments are too many or too few, or
// it is written as a bare ambitctl.
func Check(newRoot func() *cobra.Command, c *Command) error {
	if !c.Ambitctl() {
		return fmt.Errorf("%s: not an ambitctl command", c)
	}
	if c.Args[0] != Program {
		return fmt.Errorf("%s: write %s, where make build puts it (ambitctl is not on the PATH)", c, Program)
	}
	root := newRoot()
	cmd, rest, err := root.Find(c.Args[1:])
	if err != nil {
		return fmt.Errorf("%s: %w", c, err)
	}
	if cmd == root && len(c.Args) > 1 {
		return fmt.Errorf("%s: no command %q", c, c.Args[1])
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return fmt.Errorf("%s: %s: %w", c, cmd.CommandPath(), err)
	}
	pos := cmd.Flags().Args()
	if cmd.HasSubCommands() && len(pos) > 0 {
		return fmt.Errorf("%s: %s has no command %q", c, cmd.CommandPath(), pos[0])
	}
	if err := cmd.ValidateArgs(pos); err != nil {
		return fmt.Errorf("%s: %s: %w", c, cmd.CommandPath(), err)
	}
	return nil
}
