package capture

import (
	"context"
	"syscall"
	"testing"
	"time"

	"ambit.dev/ztunnel/internal/netnstest"
	"golang.org/x/sys/unix"
)

// countCompares counts the iptables comparisons Check makes for the rest of the test.
func countCompares(t *testing.T) *int {
	t.Helper()
	n := new(int)
	orig := compareRules
	compareRules = func(ctx context.Context, path string) (bool, error) {
		*n++
		return orig(ctx, path)
	}
	t.Cleanup(func() { compareRules = orig })
	return n
}

// setNFTables makes Check believe the iptables backend is (or is not) nf_tables.
func setNFTables(t *testing.T, nft bool) {
	t.Helper()
	backend.mu.Lock()
	known, was := backend.known, backend.nft
	backend.known, backend.nft = true, nft
	backend.mu.Unlock()
	t.Cleanup(func() {
		backend.mu.Lock()
		backend.known, backend.nft = known, was
		backend.mu.Unlock()
	})
}

// check runs Check and fails the test when it errs or says other than want.
func check(t *testing.T, pod string, seen Seen, want bool) Seen {
	t.Helper()
	ok, now, err := Check(t.Context(), pod, seen)
	if err != nil {
		t.Fatal(err)
	}
	if ok != want {
		t.Fatalf("Check = %v, want %v\n%s", ok, want, netState(t, pod))
	}
	return now
}

func TestCheckComparesRulesOnlyAfterAChange(t *testing.T) {
	pod, _ := testPair(t)
	ctx := t.Context()
	if !nfTables(ctx) {
		t.Skip("iptables here is not iptables-nft; Check compares every time (TestCheckComparesEveryTimeWithoutGeneration)")
	}
	compares := countCompares(t)
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	seen := check(t, pod, Seen{}, true)
	if *compares != 1 {
		t.Fatalf("%d comparisons for the first check, want 1", *compares)
	}
	for range 3 {
		seen = check(t, pod, seen, true)
	}
	if *compares != 1 {
		t.Fatalf("%d comparisons after three checks of unchanged rules, want still 1", *compares)
	}

	// A chain flushed behind ztunnel's back moves the generation: compared, and caught.
	if _, err := run(ctx, pod, nil, "iptables", "-t", "nat", "-F", chainPrerouting); err != nil {
		t.Fatal(err)
	}
	seen = check(t, pod, seen, false)
	if *compares != 2 {
		t.Fatalf("%d comparisons after a flushed chain, want 2", *compares)
	}
	// A mismatch is not remembered as a match: the next check compares again.
	seen = check(t, pod, seen, false)
	if *compares != 3 {
		t.Fatalf("%d comparisons after a second check of the flushed chain, want 3", *compares)
	}
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	seen = check(t, pod, seen, true)
	seen = check(t, pod, seen, true)
	if *compares != 4 {
		t.Fatalf("%d comparisons after the repair and one more check, want 4", *compares)
	}

	// Someone else's table: compared, still ours as installed.
	if _, err := run(ctx, pod, nil, "nft", "add", "table", "inet", "someone_else"); err != nil {
		t.Fatal(err)
	}
	seen = check(t, pod, seen, true)
	if *compares != 5 {
		t.Fatalf("%d comparisons after another table was added, want 5", *compares)
	}

	// The policy rule and the route are read every time, without a comparison.
	if _, err := run(ctx, pod, nil, append([]string{"ip", "rule", "del"}, ipRule...)...); err != nil {
		t.Fatal(err)
	}
	check(t, pod, seen, false)
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	seen = check(t, pod, Seen{}, true)
	if _, err := run(ctx, pod, nil, append([]string{"ip", "route", "del"}, ipRoute...)...); err != nil {
		t.Fatal(err)
	}
	check(t, pod, seen, false)

	// What one namespace's check saw says nothing about another's.
	other, _ := testPair(t)
	if err := Install(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, other, nil, "iptables", "-t", "mangle", "-F", chainOutput); err != nil {
		t.Fatal(err)
	}
	before := *compares
	if err := Install(ctx, pod); err != nil {
		t.Fatal(err)
	}
	seen = check(t, pod, Seen{}, true)
	if ok, _, err := Check(ctx, other, seen); err != nil || ok {
		t.Fatalf("another namespace with a flushed chain checked with this one's result: ok=%v err=%v", ok, err)
	}
	if *compares != before+2 {
		t.Fatalf("%d comparisons for two namespaces' first checks, want %d", *compares, before+2)
	}
}

// Without a generation to go by, every check compares: iptables-legacy, whose rules are not
// nf_tables', or a kernel without nf_tables.
func TestCheckComparesEveryTimeWithoutGeneration(t *testing.T) {
	for _, c := range []struct {
		name   string
		nft    bool
		genErr error
	}{
		{"iptables-legacy", false, nil},
		{"no nf_tables in the kernel", true, syscall.EPROTONOSUPPORT},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod, _ := testPair(t)
			ctx := t.Context()
			setNFTables(t, c.nft)
			if c.genErr != nil {
				orig := generation
				generation = func() (uint32, error) { return 0, c.genErr }
				t.Cleanup(func() { generation = orig })
			}
			compares := countCompares(t)
			if err := Install(ctx, pod); err != nil {
				t.Fatal(err)
			}
			seen := Seen{}
			for range 3 {
				seen = check(t, pod, seen, true)
			}
			if *compares != 3 {
				t.Fatalf("%d comparisons for three checks, want 3", *compares)
			}
		})
	}
}

func TestCheckMissingNamespace(t *testing.T) {
	ok, seen, err := Check(t.Context(), "/nonexistent/netns", Seen{matched: true})
	if err == nil || ok || seen != (Seen{}) {
		t.Fatalf("Check of a missing namespace = %v, %+v, %v; want an error and nothing seen", ok, seen, err)
	}
}

func BenchmarkCheck(b *testing.B) {
	pod, _ := netnstest.Pair(b)
	ctx := b.Context()
	if err := Install(ctx, pod); err != nil {
		b.Fatal(err)
	}
	b.Run("compare", func(b *testing.B) {
		defer reportCPU(b)()
		for b.Loop() {
			if ok, _, err := Check(ctx, pod, Seen{}); err != nil || !ok {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		_, seen, err := Check(ctx, pod, Seen{})
		if err != nil {
			b.Fatal(err)
		}
		defer reportCPU(b)()
		for b.Loop() {
			if ok, _, err := Check(ctx, pod, seen); err != nil || !ok {
				b.Fatal(ok, err)
			}
		}
	})
}

// reportCPU reports the CPU time per operation of the process and the programs it ran
// (iptables-save and nsenter), which ns/op, a wall-clock figure, does not show.
func reportCPU(b *testing.B) func() {
	start := cpuTime(b)
	return func() { b.ReportMetric(float64((cpuTime(b)-start).Microseconds())/float64(b.N), "cpu-µs/op") }
}

func cpuTime(b *testing.B) time.Duration {
	var total time.Duration
	for _, who := range []int{unix.RUSAGE_SELF, unix.RUSAGE_CHILDREN} {
		var ru unix.Rusage
		if err := unix.Getrusage(who, &ru); err != nil {
			b.Fatal(err)
		}
		total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return total
}
