package capture

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
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

// Policy routing for transparent inbound dials (DialOptions.Source), as in Istio's in-pod
// mode: the connection ztunnel opens to an application from the client's address gets
// connmark ConnMark; the application's replies, addressed to that foreign address, take the
// connmark back as their packet mark in mangle OUTPUT, and the rule sends marked packets to
// RouteTable, whose only route delivers everything locally, to ztunnel's socket, instead of
// out of the pod.
const (
	ConnMark   = 0x111
	RouteTable = 100
	RulePref   = 32764
)

// ipRule and ipRoute are the arguments of `ip rule` and `ip route` after the verb.
var (
	ipRule  = []string{"fwmark", fmt.Sprintf("0x%x/0xfff", ConnMark), "pref", fmt.Sprint(RulePref), "lookup", fmt.Sprint(RouteTable)}
	ipRoute = []string{"local", "0.0.0.0/0", "dev", "lo", "table", fmt.Sprint(RouteTable)}
)

// rules returns the iptables-restore input for the capture chains. The built-in chains are
// not flushed (--noflush): the jumps are added separately, once.
func rules() string {
	mark := fmt.Sprintf("0x%x/0xfff", Mark)
	connMark := fmt.Sprintf("0x%x/0xfff", ConnMark)
	var b strings.Builder
	// Transparent dials: ztunnel's marked packets arriving over loopback (its dial to the
	// application) mark their connection; the application's replies restore that mark so
	// the policy rule routes them back to ztunnel.
	b.WriteString("*mangle\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n", chainOutput, chainPrerouting)
	fmt.Fprintf(&b, "-F %s\n-F %s\n", chainOutput, chainPrerouting)
	fmt.Fprintf(&b, "-A %s -m mark --mark %s -j CONNMARK --set-xmark %s\n", chainPrerouting, mark, connMark)
	fmt.Fprintf(&b, "-A %s -m connmark --mark %s -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n", chainOutput, connMark)
	b.WriteString("COMMIT\n")
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

// jump is a rule ambit places in a built-in chain.
type jump struct {
	table string
	rule  []string
}

// jumps are the only rules ambit places in built-in chains.
var jumps = []jump{
	{"mangle", []string{"OUTPUT", "-p", "tcp", "-j", chainOutput}},
	{"mangle", []string{"PREROUTING", "-p", "tcp", "-j", chainPrerouting}},
	{"nat", []string{"OUTPUT", "-p", "tcp", "-j", chainOutput}},
	{"nat", []string{"PREROUTING", "-p", "tcp", "-j", chainPrerouting}},
}

// tables are the iptables tables ambit writes to.
var tables = []string{"mangle", "nat"}

// Install puts the capture rules into the network namespace at path. Running it again
// repairs rules that were changed behind ztunnel's back and adds nothing twice.
func Install(ctx context.Context, path string) error {
	if _, err := run(ctx, path, strings.NewReader(rules()), "iptables-restore", "-w", "5", "--noflush"); err != nil {
		return fmt.Errorf("install capture rules in %s: %w", path, err)
	}
	for _, j := range jumps {
		if _, err := run(ctx, path, nil, iptablesArgs(j.table, "-C", j.rule)...); err == nil {
			continue
		}
		if _, err := run(ctx, path, nil, iptablesArgs(j.table, "-I", j.rule)...); err != nil {
			return fmt.Errorf("install capture jump in %s: %w", path, err)
		}
	}
	if ok, err := hasRule(path); err != nil {
		return err
	} else if !ok {
		if _, err := run(ctx, path, nil, append([]string{"ip", "rule", "add"}, ipRule...)...); err != nil {
			return fmt.Errorf("install policy rule in %s: %w", path, err)
		}
	}
	if _, err := run(ctx, path, nil, append([]string{"ip", "route", "replace"}, ipRoute...)...); err != nil {
		return fmt.Errorf("install local route in %s: %w", path, err)
	}
	return nil
}

// hasRule reports whether the namespace has ambit's policy rule.
func hasRule(path string) (bool, error) {
	var ok bool
	err := InNetns(path, func() (err error) { ok, err = policyRulePresent(); return err })
	if err != nil {
		return false, fmt.Errorf("read policy rules in %s: %w", path, err)
	}
	return ok, nil
}

// hasRoute reports whether the namespace has ambit's local route.
func hasRoute(path string) (bool, error) {
	var ok bool
	err := InNetns(path, func() (err error) { ok, err = localRoutePresent(); return err })
	if err != nil {
		return false, fmt.Errorf("read routes in %s: %w", path, err)
	}
	return ok, nil
}

// Remove deletes every rule, chain and route Install made; a namespace without them is left
// as it is.
func Remove(ctx context.Context, path string) error {
	for _, j := range jumps {
		// Delete until gone, in case a duplicate was added behind our back.
		for range 10 {
			if _, err := run(ctx, path, nil, iptablesArgs(j.table, "-C", j.rule)...); err != nil {
				break
			}
			if _, err := run(ctx, path, nil, iptablesArgs(j.table, "-D", j.rule)...); err != nil {
				return fmt.Errorf("remove capture jump in %s: %w", path, err)
			}
		}
	}
	for _, table := range tables {
		for _, chain := range []string{chainOutput, chainPrerouting} {
			if _, err := run(ctx, path, nil, "iptables", "-w", "5", "-t", table, "-nL", chain); err != nil {
				continue // not there
			}
			if _, err := run(ctx, path, nil, "iptables", "-w", "5", "-t", table, "-F", chain); err != nil {
				return fmt.Errorf("flush %s %s in %s: %w", table, chain, path, err)
			}
			if _, err := run(ctx, path, nil, "iptables", "-w", "5", "-t", table, "-X", chain); err != nil {
				return fmt.Errorf("delete %s %s in %s: %w", table, chain, path, err)
			}
		}
		if err := dropEmptyTable(ctx, path, table); err != nil {
			return err
		}
	}
	for range 10 {
		if ok, err := hasRule(path); err != nil {
			return err
		} else if !ok {
			break
		}
		if _, err := run(ctx, path, nil, append([]string{"ip", "rule", "del"}, ipRule...)...); err != nil {
			return fmt.Errorf("remove policy rule in %s: %w", path, err)
		}
	}
	if ok, err := hasRoute(path); err != nil {
		return err
	} else if ok {
		if _, err := run(ctx, path, nil, append([]string{"ip", "route", "del"}, ipRoute...)...); err != nil {
			return fmt.Errorf("remove local route in %s: %w", path, err)
		}
	}
	return nil
}

// dropEmptyTable deletes an iptables table when nothing but our now-removed rules ever used
// it: with nf_tables the first iptables call creates the table, and "as before" means
// without it. A table holding anyone else's rules or policies is left alone.
func dropEmptyTable(ctx context.Context, path, table string) error {
	if _, err := run(ctx, path, nil, "nft", "list", "table", "ip", table); err != nil {
		return nil // no such table at all (or legacy iptables)
	}
	out, err := run(ctx, path, nil, "iptables-save", "-t", table)
	if err != nil {
		return fmt.Errorf("read %s table in %s: %w", table, path, err)
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
	if _, err := run(ctx, path, nil, "nft", "delete", "table", "ip", table); err != nil {
		return fmt.Errorf("drop empty %s table in %s: %w", table, path, err)
	}
	return nil
}

func isBuiltin(chain string) bool {
	switch chain {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// Installed reports whether the namespace's rules and routes are exactly what Install
// writes, comparing everything (Check with nothing seen before).
func Installed(ctx context.Context, path string) (bool, error) {
	ok, _, err := Check(ctx, path, Seen{})
	return ok, err
}

// Seen is what Check found in one namespace, for the next Check of the same path: which
// namespace it was (its inode) and the nf_tables generation under which its iptables rules
// last matched. The zero value has seen nothing.
type Seen struct {
	dev, ino uint64
	gen      uint32
	hasGen   bool // the kernel answered with a generation (not without nf_tables)
	matched  bool
}

// Check reports whether the namespace's rules and routes are exactly what Install writes;
// ztunnel checks every captured pod periodically and reinstalls on drift. The policy rule,
// the route and the namespace's nf_tables generation are read over netlink each time; the
// iptables rules themselves (iptables-save of two tables, two programs run in the pod) are
// compared only when that generation moved since seen, the previous Check's result for the
// same path, or the namespace is another one. Any change to any nf_tables table of the
// namespace, iptables-nft's included, moves the generation. With iptables-legacy, whose rules
// are not nf_tables', every Check compares them.
func Check(ctx context.Context, path string, seen Seen) (bool, Seen, error) {
	now, rule, route, err := look(path)
	if err != nil {
		return false, Seen{}, err
	}
	if !rule || !route {
		return false, now, nil
	}
	if seen.matched && now.hasGen && seen.dev == now.dev && seen.ino == now.ino && seen.gen == now.gen && nfTables(ctx) {
		now.matched = true
		return true, now, nil
	}
	ok, err := compareRules(ctx, path)
	if err != nil {
		return false, Seen{}, err
	}
	now.matched = ok
	return ok, now, nil
}

// look reads, from inside the namespace at path, its identity, its nf_tables generation (if
// the kernel has one) and whether ambit's policy rule and route are there. The generation is read before the rules
// are compared, so a change made during the comparison is seen by the next Check.
func look(path string) (now Seen, rule, route bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Seen{}, false, false, fmt.Errorf("netns %s: %w", path, err)
	}
	now.dev, now.ino = st.Dev, st.Ino
	err = InNetns(path, func() error {
		// A kernel without nf_tables (iptables-legacy only) has no generation to give;
		// then every Check compares the rules.
		gen, err := generation()
		now.gen, now.hasGen = gen, err == nil
		if rule, err = policyRulePresent(); err != nil {
			return err
		}
		route, err = localRoutePresent()
		return err
	})
	if err != nil {
		return Seen{}, false, false, fmt.Errorf("check netns %s: %w", path, err)
	}
	return now, rule, route, nil
}

// generation reads the caller's namespace's nf_tables generation; a variable so that tests
// can play a kernel without nf_tables.
var generation = nftGeneration

// compareRules reports whether the ambit rules iptables-save prints for the namespace are
// exactly the ones Install writes. A variable so that tests can count the comparisons.
var compareRules = func(ctx context.Context, path string) (bool, error) {
	var got []string
	for _, table := range tables {
		out, err := run(ctx, path, nil, "iptables-save", "-t", table)
		if err != nil {
			return false, fmt.Errorf("read rules in %s: %w", path, err)
		}
		for _, l := range ambitRules(out) {
			got = append(got, table+" "+l)
		}
	}
	var want []string
	for _, j := range jumps {
		want = append(want, j.table+" -A "+strings.Join(j.rule, " "))
	}
	table := ""
	for _, l := range strings.Split(rules(), "\n") {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		if strings.HasPrefix(l, "-A ") {
			want = append(want, table+" "+l)
		}
	}
	return equalSets(got, want), nil
}

// nfTables reports whether the iptables ztunnel runs writes its rules through nf_tables
// (iptables-nft, Debian's default and the image's), asking it once; until an answer comes,
// it says no, and Check compares the rules every time.
func nfTables(ctx context.Context) bool {
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if !backend.known {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, "iptables", "--version")
		cmd.Stdout = &out
		if err := runProgram(cmd); err != nil {
			return false
		}
		backend.known, backend.nft = true, strings.Contains(out.String(), "nf_tables")
	}
	return backend.nft
}

var backend struct {
	mu         sync.Mutex
	known, nft bool
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

func iptablesArgs(table, op string, rule []string) []string {
	return append([]string{"iptables", "-w", "5", "-t", table, op}, rule...)
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
	if err := runProgram(cmd); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
