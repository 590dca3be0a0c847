// Package maxprocs decides how many OS threads run a proxy's Go code at once (Go's
// GOMAXPROCS): one while a core is enough, more while the proxy is busier than that.
//
// A proxy's work is short bursts around each readiness event. With several processors,
// the runtime wakes an idle one for every goroutine a network event makes runnable; it
// spins, steals the goroutine, sleeps and is woken again, and on a loaded node those
// hand-offs cost more than the work they move (futex and nanosleep calls, cold caches).
// With one processor the goroutine runs where the event was read. docs/benchmarks.md has
// the A/B: ztunnel spent a quarter less CPU per new connection and an eighth less per
// request at 4,000 req/s, the waypoint about 28 % less per request. One processor also caps
// the proxy near one core, which a busy node may need more than, so the default (auto)
// adds processors while the proxy keeps them busy and the node has cores to spare, and
// takes them back when the load has gone.
package maxprocs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FlagUsage is the help of the proxies' --workers flag, which Start takes.
const FlagUsage = "how many threads run the proxy's Go code at once (GOMAXPROCS); 0: auto, one while a core is enough and more, up to the CPUs the process may use, while it keeps a core busy (GOMAXPROCS in the environment fixes it instead)"

// The governor's rules: it samples the process's CPU time and the node's idle time every
// Interval. After UpAfter samples in a row in which the proxy kept at least UpShare of its
// processors busy while the node had at least one core idle, it adds a processor: another
// one helps only where a core is free to run it (on a node whose cores are all busy, more
// processors only add hand-offs). After DownAfter samples in a row in which the proxy used
// at most DownShare of one processor fewer, or the node had less than DownIdle of a core
// idle, it takes one away. The gap between the two keeps it from flapping: one processor
// becomes two at 0.8 of a core busy, and two go back to one at half a core.
const (
	Interval  = time.Second
	UpShare   = 0.8
	UpAfter   = 2
	DownShare = 0.5
	DownIdle  = 0.25
	DownAfter = 10
)

// Start applies the --workers setting: n > 0 fixes the processors at n; 0 is auto, unless
// GOMAXPROCS is in the environment (the runtime has read it, and it stays). In auto mode it
// starts at one and governs the count until ctx ends, up to the runtime's own default (the
// CPUs the process may use, within its cgroup's limit).
func Start(ctx context.Context, n int, log *slog.Logger) error {
	switch {
	case n < 0:
		return fmt.Errorf("--workers %d: want 0 (auto) or a positive count", n)
	case n > 0:
		runtime.GOMAXPROCS(n)
		log.Info("workers fixed", "workers", n)
		return nil
	case os.Getenv("GOMAXPROCS") != "":
		log.Info("workers fixed by GOMAXPROCS", "workers", runtime.GOMAXPROCS(0))
		return nil
	}
	g := &Governor{Max: runtime.GOMAXPROCS(0), N: 1}
	runtime.GOMAXPROCS(1)
	log.Info("workers auto", "workers", 1, "max", g.Max)
	if g.Max > 1 {
		go g.run(ctx, log)
	}
	return nil
}

// Governor holds the auto mode's state: N processors now, at most Max, and how many samples
// in a row have argued for a change.
type Governor struct {
	N, Max   int
	up, down int
}

// Observe takes the CPU the process used over the last interval and the node's idle CPU
// over the same interval, both in cores, and returns the processor count to use from now on.
func (g *Governor) Observe(busy, idle float64) int {
	if busy >= UpShare*float64(g.N) && idle >= 1 && g.N < g.Max {
		g.up++
	} else {
		g.up = 0
	}
	if g.N > 1 && (busy <= DownShare*float64(g.N-1) || idle < DownIdle) {
		g.down++
	} else {
		g.down = 0
	}
	switch {
	case g.up >= UpAfter:
		g.N++
		g.up, g.down = 0, 0
	case g.down >= DownAfter:
		g.N--
		g.up, g.down = 0, 0
	}
	return g.N
}

func (g *Governor) run(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	last, lastIdle, lastAt := cpuTime(), idleTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			used, idle := cpuTime(), idleTime()
			span := now.Sub(lastAt).Seconds()
			busy, free := (used-last).Seconds()/span, (idle-lastIdle).Seconds()/span
			last, lastIdle, lastAt = used, idle, now
			if busy < 0 || free < 0 { // a reading failed (zero): no sample
				continue
			}
			g.step(busy, free, log)
		}
	}
}

// step applies one sample: Observe, and a changed count goes to the runtime and the log.
func (g *Governor) step(busy, free float64, log *slog.Logger) {
	before := g.N
	if n := g.Observe(busy, free); n != before {
		runtime.GOMAXPROCS(n)
		log.Info("workers changed", "workers", n, "was", before,
			"busy_cores", fmt.Sprintf("%.2f", busy), "node_idle_cores", fmt.Sprintf("%.2f", free))
	}
}

// cpuTime is the CPU time (user and system) of every thread of the process so far; zero if
// the kernel will not say.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleTime is the time the node's CPUs have spent idle (or waiting for I/O) so far, from
// the first line of /proc/stat; zero if it cannot be read, which reads as no idle core, so
// that the governor never adds a processor on a guess.
func idleTime() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	return parseIdle(b)
}

// parseIdle reads the idle and iowait columns of /proc/stat's "cpu" line, in the kernel's
// clock ticks (USER_HZ, 100 a second on every Linux architecture Go supports).
func parseIdle(stat []byte) time.Duration {
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, v := range f[4:6] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100)
}
