package inpod

import (
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"ambit.dev/proto/nodeapi"
	"ambit.dev/ztunnel/internal/capture"
)

// logs records what a Manager logs, for tests that expect exactly one clear line.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.msgs = append(l.msgs, s)
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

// lines returns the lines that start with msg.
func (l *logs) lines(msg string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range l.msgs {
		if strings.HasPrefix(m, msg) {
			out = append(out, m)
		}
	}
	return out
}

func (l *logs) one(t *testing.T, msg string, want ...string) {
	t.Helper()
	got := l.lines(msg)
	if len(got) != 1 {
		t.Fatalf("logged %q %d times, want once: %q", msg, len(got), got)
	}
	for _, w := range want {
		if !strings.Contains(got[0], w) {
			t.Fatalf("log line %q lacks %q", got[0], w)
		}
	}
}

func withLogs(n *node) *logs {
	l := &logs{}
	n.m.recMu.Lock() // a reconciliation newNode started may be running
	n.m.log = slog.New(l)
	n.m.recMu.Unlock()
	return l
}

// countingNetns counts installations.
type countingNetns struct {
	Netns
	installs atomic.Int32
}

func (c *countingNetns) Install(ctx context.Context, netns string) error {
	c.installs.Add(1)
	return c.Netns.Install(ctx, netns)
}

func TestRegistrationWithVanishedNamespaceRefused(t *testing.T) {
	n := newNode(t)
	l := withLogs(n)
	gone := "/var/run/netns/ambit-t-gone"
	err := n.m.Add(t.Context(), nodeapi.Registration{UID: "ghost", NetNS: gone})
	if err == nil || !strings.Contains(err.Error(), gone) {
		t.Fatalf("registration of a vanished namespace: %v, want an error naming %s", err, gone)
	}
	l.one(t, "pod registration refused: network namespace not found", "uid=ghost", "netns="+gone)
	if pods := n.m.Pods(); len(pods) != 0 {
		t.Fatalf("pods = %+v", pods)
	}
}

// A captured pod whose namespace disappears (deleted without a removal through the node
// API) is released on the next reconciliation: its proxy stops, its record goes.
func TestCapturedPodNamespaceVanishes(t *testing.T) {
	n := newNode(t)
	l := withLogs(n)
	ctx := t.Context()
	if err := n.m.Add(ctx, nodeapi.Registration{UID: "client", NetNS: n.client}); err != nil {
		t.Fatal(err)
	}
	if pods := n.m.Pods(); len(pods) != 1 || !pods[0].Captured {
		t.Fatalf("pods = %+v", pods)
	}
	if out, err := exec.Command("ip", "netns", "del", filepath.Base(n.client)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	n.m.Reconcile(ctx)
	if pods := n.m.Pods(); len(pods) != 0 {
		t.Fatalf("pods after their namespace vanished = %+v", pods)
	}
	l.one(t, "pod network namespace gone; pod released", "uid=client", "netns="+n.client)
	// The record on disk forgets it too: a restart does not try it again.
	second := NewManager(n.m.node, n.st, Netns{}, filepath.Dir(n.m.file), slog.New(slog.DiscardHandler))
	if err := second.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if pods := second.Pods(); len(pods) != 0 {
		t.Fatalf("restored pods = %+v", pods)
	}
}

// Adding a pod twice captures it once and opens one set of listeners; another pod claiming
// the same namespace is refused.
func TestDuplicateAdd(t *testing.T) {
	n := newNode(t)
	l := withLogs(n)
	ctx := t.Context()
	if err := n.m.Add(ctx, nodeapi.Registration{UID: "server", NetNS: n.server}); err != nil {
		t.Fatal(err)
	}
	c := &countingNetns{}
	n.m.recMu.Lock()
	n.m.capture = c
	n.m.recMu.Unlock()
	r := nodeapi.Registration{UID: "client", NetNS: n.client}
	if err := n.m.Add(ctx, r); err != nil {
		t.Fatal(err)
	}
	n.m.mu.Lock()
	first := n.m.pods["client"].proxy
	n.m.mu.Unlock()
	if err := n.m.Add(ctx, r); err != nil {
		t.Fatal(err)
	}
	n.m.mu.Lock()
	second := n.m.pods["client"].proxy
	n.m.mu.Unlock()
	if got := c.installs.Load(); got != 1 || first == nil || first != second {
		t.Fatalf("after a duplicate add: %d installs, proxy %p then %p; want 1 install and the same proxy", got, first, second)
	}
	l.one(t, "pod registered already; nothing to do", "uid=client")
	err := n.m.Add(ctx, nodeapi.Registration{UID: "impostor", NetNS: n.client})
	if err == nil || !strings.Contains(err.Error(), "registered for pod client") {
		t.Fatalf("second pod on the same namespace: %v", err)
	}
	l.one(t, "pod registration refused: network namespace belongs to another pod", "uid=impostor")
	if pods := n.m.Pods(); len(pods) != 2 || c.installs.Load() != 1 {
		t.Fatalf("pods = %+v, %d installs", pods, c.installs.Load())
	}
	if got, err := n.call(); err != nil || got != "echo: hi" {
		t.Fatalf("call = %q, %v", got, err)
	}
}

// Rules changed behind ztunnel's back (a flushed chain, a deleted jump) are found by the
// periodic check and on reconciliation, repaired, and logged once naming the pod.
func TestRulesChangedBehindZtunnelsBack(t *testing.T) {
	n := newNode(t)
	l := withLogs(n)
	ctx := t.Context()
	for _, r := range []nodeapi.Registration{{UID: "client", NetNS: n.client}, {UID: "server", NetNS: n.server}} {
		if err := n.m.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	const repaired = "capture rules changed behind ztunnel's back; repaired"
	n.m.CheckCapture(ctx)
	if got := l.lines(repaired); len(got) != 0 {
		t.Fatalf("intact rules reported: %q", got)
	}
	ipt := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("nsenter", append([]string{"--net=" + n.client, "iptables", "-w", "5"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	installed := func() bool {
		ok, err := capture.Installed(ctx, n.client)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	// Someone flushes the outbound chain: the periodic check repairs it.
	ipt("-t", "nat", "-F", "AMBIT_OUTPUT")
	if installed() {
		t.Fatal("flushed chain not seen as a change")
	}
	n.m.CheckCapture(ctx)
	n.m.CheckCapture(ctx)
	l.one(t, repaired, "uid=client", "pod=shop/client", "netns="+n.client)
	if !installed() {
		t.Fatal("rules not repaired")
	}

	// Someone deletes a jump: the next reconciliation repairs it.
	n.m.recMu.Lock()
	n.m.checkSpacing = 0
	n.m.recMu.Unlock()
	ipt("-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "AMBIT_OUTPUT")
	n.m.Reconcile(ctx)
	if got := l.lines(repaired); len(got) != 2 {
		t.Fatalf("repairs logged: %q, want two", got)
	}
	if !installed() {
		t.Fatal("jump not repaired")
	}
	if got, err := n.call(); err != nil || got != "echo: hi" {
		t.Fatalf("call after the repairs = %q, %v", got, err)
	}
}

// lookingNetns counts the checks of one namespace, and the full looks among them: the
// checks told nothing was seen before (capture.Check then runs iptables-save).
type lookingNetns struct {
	Netns
	netns        string
	checks, full atomic.Int32
}

func (c *lookingNetns) Check(ctx context.Context, netns string, seen capture.Seen) (bool, capture.Seen, error) {
	if netns == c.netns {
		c.checks.Add(1)
		if seen == (capture.Seen{}) {
			c.full.Add(1)
		}
	}
	return c.Netns.Check(ctx, netns, seen)
}

// The first full look at a pod's rules is part of its capture (before the capture's
// memreturn.Settle), so the periodic checks after it only ask what changed.
func TestCaptureTakesTheFirstFullLook(t *testing.T) {
	n := newNode(t)
	ctx := t.Context()
	if err := n.m.Add(ctx, nodeapi.Registration{UID: "server", NetNS: n.server}); err != nil {
		t.Fatal(err)
	}
	c := &lookingNetns{netns: n.client}
	n.m.recMu.Lock()
	n.m.capture = c
	n.m.recMu.Unlock()
	if err := n.m.Add(ctx, nodeapi.Registration{UID: "client", NetNS: n.client}); err != nil {
		t.Fatal(err)
	}
	if checks, full := c.checks.Load(), c.full.Load(); checks != 1 || full != 1 {
		t.Fatalf("captured: %d checks, %d full; want the capture's one full look", checks, full)
	}
	for range 2 {
		n.m.CheckCapture(ctx)
	}
	if checks, full := c.checks.Load(), c.full.Load(); checks != 3 || full != 1 {
		t.Fatalf("after two periodic checks: %d checks, %d full; want 3 and 1", checks, full)
	}
	if got, err := n.call(); err != nil || got != "echo: hi" {
		t.Fatalf("call = %q, %v", got, err)
	}
}

// neverInstalled is an iptables whose rendering the check does not recognise.
type neverInstalled struct{ Netns }

func (neverInstalled) Check(context.Context, string, capture.Seen) (bool, capture.Seen, error) {
	return false, capture.Seen{}, nil
}

// A check that cannot tell (the rules look different even right after installing them) is
// logged once, not reported as a repair on every round.
func TestRuleCheckThatNeverMatchesLogsOnce(t *testing.T) {
	n := newNode(t)
	l := withLogs(n)
	ctx := t.Context()
	n.m.recMu.Lock()
	n.m.capture = neverInstalled{}
	n.m.recMu.Unlock()
	if err := n.m.Add(ctx, nodeapi.Registration{UID: "client", NetNS: n.client}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		n.m.CheckCapture(ctx)
	}
	l.one(t, "capture rules check failed", "pod=shop/client", "right after installing")
	if got := l.lines("capture rules changed behind ztunnel's back"); len(got) != 0 {
		t.Fatalf("reported as repairs: %q", got)
	}
}
