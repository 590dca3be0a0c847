package capture

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Ports ztunnel listens on inside each pod (design.md: Names and ports).
const (
	OutboundPort = 15001
	InboundPort  = 15006
	HBONEPort    = 15008
)

// Chain names. The jumps into them are the only rules ambit adds to built-in chains.
const (
	chainOutput     = "AMBIT_OUTPUT"
	chainPrerouting = "AMBIT_PREROUTING"
)

// rules returns the iptables-restore input for the capture chains. The built-in chains are
// not flushed (--noflush): the jumps are added separately, once.
func rules() string {
	mark := fmt.Sprintf("0x%x/0xfff", Mark)
	var b strings.Builder
	b.WriteString("*nat\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n", chainOutput, chainPrerouting)
	fmt.Fprintf(&b, "-F %s\n-F %s\n", chainOutput, chainPrerouting)
	// Outbound: ztunnel's own sockets and loopback pass; every other TCP connection the pod
	// opens goes to the outbound listener.
	fmt.Fprintf(&b, "-A %s -m mark --mark %s -j RETURN\n", chainOutput, mark)
	fmt.Fprintf(&b, "-A %s -o lo -j RETURN\n", chainOutput)
	fmt.Fprintf(&b, "-A %s -d 127.0.0.0/8 -j RETURN\n", chainOutput)
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", chainOutput, OutboundPort)
	// Inbound: HBONE reaches ztunnel's 15008 as addressed; any other TCP arriving for the
	// pod is plaintext and goes to the inbound listener, which applies PeerAuthentication.
	fmt.Fprintf(&b, "-A %s -m mark --mark %s -j RETURN\n", chainPrerouting, mark)
	fmt.Fprintf(&b, "-A %s -i lo -j RETURN\n", chainPrerouting)
	fmt.Fprintf(&b, "-A %s -p tcp --dport %d -j RETURN\n", chainPrerouting, HBONEPort)
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", chainPrerouting, InboundPort)
	b.WriteString("COMMIT\n")
	return b.String()
}

// jumps are the rules ambit places in built-in nat chains.
var jumps = [][]string{
	{"OUTPUT", "-p", "tcp", "-j", chainOutput},
	{"PREROUTING", "-p", "tcp", "-j", chainPrerouting},
}

// Install puts the capture rules into the network namespace at path. Running it again
// repairs rules that were changed behind ztunnel's back and adds nothing twice.
func Install(ctx context.Context, path string) error {
	if _, err := run(ctx, path, strings.NewReader(rules()), "iptables-restore", "-w", "5", "--noflush"); err != nil {
		return fmt.Errorf("install capture rules in %s: %w", path, err)
	}
	for _, j := range jumps {
		if _, err := run(ctx, path, nil, iptablesArgs("-C", j)...); err == nil {
			continue
		}
		if _, err := run(ctx, path, nil, iptablesArgs("-I", j)...); err != nil {
			return fmt.Errorf("install capture jump in %s: %w", path, err)
		}
	}
	return nil
}

// Remove deletes every rule and chain Install made; a namespace without them is left as
// it is.
func Remove(ctx context.Context, path string) error {
	for _, j := range jumps {
		// Delete until gone, in case a duplicate was added behind our back.
		for range 10 {
			if _, err := run(ctx, path, nil, iptablesArgs("-C", j)...); err != nil {
				break
			}
			if _, err := run(ctx, path, nil, iptablesArgs("-D", j)...); err != nil {
				return fmt.Errorf("remove capture jump in %s: %w", path, err)
			}
		}
	}
	for _, chain := range []string{chainOutput, chainPrerouting} {
		if _, err := run(ctx, path, nil, "iptables", "-w", "5", "-t", "nat", "-nL", chain); err != nil {
			continue // not there
		}
		if _, err := run(ctx, path, nil, "iptables", "-w", "5", "-t", "nat", "-F", chain); err != nil {
			return fmt.Errorf("flush %s in %s: %w", chain, path, err)
		}
		if _, err := run(ctx, path, nil, "iptables", "-w", "5", "-t", "nat", "-X", chain); err != nil {
			return fmt.Errorf("delete %s in %s: %w", chain, path, err)
		}
	}
	return dropEmptyNat(ctx, path)
}

// dropEmptyNat deletes the nat table when nothing but our now-removed rules ever used it:
// with nf_tables the first iptables call creates the table, and "as before" means without
// it. A nat table holding anyone else's rules or policies is left alone.
func dropEmptyNat(ctx context.Context, path string) error {
	if _, err := run(ctx, path, nil, "nft", "list", "table", "ip", "nat"); err != nil {
		return nil // no nat table at all
	}
	out, err := run(ctx, path, nil, "iptables-save", "-t", "nat")
	if err != nil {
		return fmt.Errorf("read nat table in %s: %w", path, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "-A "):
			return nil
		case strings.HasPrefix(l, ":") && !strings.Contains(l, " ACCEPT "):
			return nil
		case strings.HasPrefix(l, ":") && !isBuiltin(strings.Fields(l)[0][1:]):
			return nil
		}
	}
	if _, err := run(ctx, path, nil, "nft", "delete", "table", "ip", "nat"); err != nil {
		return fmt.Errorf("drop empty nat table in %s: %w", path, err)
	}
	return nil
}

func isBuiltin(chain string) bool {
	switch chain {
	case "PREROUTING", "INPUT", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// Installed reports whether the namespace's rules are exactly what Install writes; ztunnel
// checks it periodically and reinstalls on drift.
func Installed(ctx context.Context, path string) (bool, error) {
	out, err := run(ctx, path, nil, "iptables-save", "-t", "nat")
	if err != nil {
		return false, fmt.Errorf("read rules in %s: %w", path, err)
	}
	got := ambitRules(out)
	want := []string{
		"-A OUTPUT -p tcp -j " + chainOutput,
		"-A PREROUTING -p tcp -j " + chainPrerouting,
	}
	for _, l := range strings.Split(rules(), "\n") {
		if strings.HasPrefix(l, "-A ") {
			want = append(want, l)
		}
	}
	return equalSets(got, want), nil
}

// ambitRules picks the lines of iptables-save output that belong to ambit.
func ambitRules(save []byte) []string {
	var out []string
	for _, l := range strings.Split(string(save), "\n") {
		if strings.HasPrefix(l, "-A ") && strings.Contains(l, "AMBIT_") {
			out = append(out, normalize(l))
		}
	}
	return out
}

// normalize makes our rule text comparable with iptables-save's rendering of it.
func normalize(l string) string {
	l = strings.ReplaceAll(l, " -m tcp", "")
	l = strings.ReplaceAll(l, "127.0.0.0/8", "127.0.0.0/8")
	return strings.Join(strings.Fields(l), " ")
}

func equalSets(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[normalize(x)]++
	}
	for _, x := range b {
		seen[normalize(x)]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

func iptablesArgs(op string, rule []string) []string {
	return append([]string{"iptables", "-w", "5", "-t", "nat", op}, rule...)
}

// run executes a command inside the network namespace at path.
func run(ctx context.Context, path string, stdin *strings.Reader, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + path, "--"}, argv...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
