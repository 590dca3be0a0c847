// Package memreturn gives a proxy's freed heap back to the kernel when a burst of work is
// over.
//
// A bulk transfer, a wave of new connections or an HTTP/3 tunnel grows a proxy's heap by
// megabytes: stream windows full of received bytes, frame and packet buffers in pools. Once
// the burst is over that memory is garbage, but Go only learns so at its next collection,
// which a proxy back at a trickle of requests (ztunnel allocates well under 100 bytes per
// request) may not run for minutes; until then the pages stay resident, and the scavenger,
// which paces itself against the heap goal of the last collection (one taken during the
// burst), keeps most of them. So a watcher reads the runtime's count of bytes allocated
// once a second; after a second that allocated a burst's worth, the first QuietAfter quiet
// seconds in a row collect the heap and return its free pages at once. The same moment
// unmaps the binary's code and read-only data (pageout.Unmap): a burst runs code the steady
// load does not (a bulk transfer's, HTTP/3's), and once run it stays in the resident set;
// unmapped, it stays in the page cache, and what the next requests run maps back in by minor
// faults. It costs two collections and a few hundred minor faults per burst, at most once
// every 30 s, and nothing while the load is steady, busy or quiet.
// docs/benchmarks.md has the A/B.
package memreturn

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"time"

	"ambit.dev/mesh/pageout"
)

// The watcher's rules: a sample interval that allocated at least BurstAlloc bytes arms it;
// QuietAfter intervals in a row that allocated less than QuietAlloc each then give the heap
// back, once. Between the two thresholds nothing changes: the load is still going. After a
// give-back the next one waits at least Spacing intervals, so that a load that comes and goes
// every few seconds costs two collections per Spacing at most, whatever the heap's size.
const (
	Interval   = time.Second
	BurstAlloc = 1 << 20
	QuietAlloc = 256 << 10
	QuietAfter = 2
	Spacing    = 30
	// SettleSpacing is the least number of intervals between a give-back and one for
	// one-off work (Settle): pods captured one after another on a busy node cost a
	// give-back per SettleSpacing at most.
	SettleSpacing = 2
	// SettleWait is the most intervals one-off work waits for a quiet one (SettleSpacing
	// apart): what follows a capture at once (the config push that names the pod, the
	// first wave of its connections' handshakes) is one-off work too, and a give-back
	// before it is over leaves that code resident.
	SettleWait = 5
)

// FlagUsage is the help of the proxies' --return-memory flag.
const FlagUsage = "after a burst of work (a second that allocated 1 MiB or more, then two quiet seconds; at most every 30 s) or one-off work (start-up once ready; ztunnel: a pod captured or released; at the first quiet second, within 5 s, at most every 2 s), collect the heap and return its free pages to the kernel at once, instead of at Go's next collection, and unmap the binary's pages, which stay in the page cache (resident memory)"

// Watcher holds the rules' state: whether a burst has been seen since the last give-back,
// how many quiet intervals have followed it, how many intervals one-off work has waited
// for its give-back (0: none waits), and how many intervals must pass before the next
// give-back may come. Its zero value has given nothing back yet.
type Watcher struct {
	armed  bool
	quiet  int
	waited int
	hold   int
}

// Settled takes the news that a piece of one-off work is over, in the interval the next
// Observe reports on: the first interval from that one that allocated less than QuietAlloc
// gives back, or the SettleWait-th at the latest, SettleSpacing intervals after the last
// give-back at the earliest.
func (w *Watcher) Settled() { w.waited = max(w.waited, 1) }

// Observe takes the bytes allocated over the last interval and reports whether to give the
// heap back now.
func (w *Watcher) Observe(alloc uint64) bool {
	w.hold = max(w.hold-1, 0)
	if w.waited > 0 {
		if w.hold <= Spacing-SettleSpacing && (alloc < QuietAlloc || w.waited >= SettleWait) {
			return w.give()
		}
		w.waited++
	}
	switch {
	case alloc >= BurstAlloc:
		w.armed, w.quiet = true, 0
	case alloc < QuietAlloc && w.armed:
		w.quiet++
		if w.quiet >= QuietAfter && w.hold == 0 {
			return w.give()
		}
	default:
		w.quiet = 0
	}
	return false
}

// give starts the spacing after a give-back, which answers every burst and piece of
// one-off work seen so far.
func (w *Watcher) give() bool {
	*w = Watcher{hold: Spacing}
	return true
}

// settled is set by Settle and taken by the watcher at its next interval.
var settled atomic.Bool

// Settle tells the watcher that a piece of one-off work is over: ztunnel calls it when it
// has captured or released a pod (the pod's certificate, its rules, its listeners), work
// that allocates little but leaves megabytes of code resident that the pod's traffic does
// not run. The watcher gives back at its first quiet interval from the current one
// (Watcher.Settled). Without Start, nothing.
func Settle() { settled.Store(true) }

// ReadyPoll is how often SettleWhenReady asks whether start-up is over.
const ReadyPoll = 100 * time.Millisecond

// SettleWhenReady calls Settle once ready reports nil (a proxy's readiness check: its first
// config and certificates are in), or returns when ctx ends first: start-up is one-off work
// too, and its code need not stay resident until the page-out (pageout.After) a while later.
func SettleWhenReady(ctx context.Context, ready func() error) {
	t := time.NewTicker(ReadyPoll)
	defer t.Stop()
	for ready() != nil {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	Settle()
}

// Start watches the process's allocations until ctx ends, giving the heap back and
// unmapping the binary's pages after each burst and after one-off work (Settle), and
// logging (at debug level) what it gave.
func Start(ctx context.Context, log *slog.Logger) {
	go run(ctx, Interval, func(before, after uint64) {
		fileBefore, fileAfter, err := pageout.Unmap()
		if err != nil {
			log.Debug("memory given back", "held_mb_before", mb(before), "held_mb_after", mb(after), "unmap_err", err)
			return
		}
		log.Debug("memory given back", "held_mb_before", mb(before), "held_mb_after", mb(after),
			"resident_file_mb_before", mb(uint64(fileBefore)), "resident_file_mb_after", mb(uint64(fileAfter)))
	})
}

// run samples every interval and calls gave after each give-back.
func run(ctx context.Context, every time.Duration, gave func(before, after uint64)) {
	t := time.NewTicker(every)
	defer t.Stop()
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	last := sample[0].Value.Uint64()
	var w Watcher
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		now := sample[0].Value.Uint64()
		if settled.Swap(false) {
			w.Settled()
		}
		give := w.Observe(now - last)
		last = now
		if give {
			gave(GiveBack())
			// the collections allocate a little; not a burst, but not to be counted as load
			metrics.Read(sample)
			last = sample[0].Value.Uint64()
		}
	}
}

// GiveBack collects the heap twice (the second collection frees what sync.Pools still held
// after the first) and returns every free page to the kernel; it reports the memory the Go
// runtime held from the kernel (all its classes but the pages already released) before and
// after.
func GiveBack() (before, after uint64) {
	before = Held()
	runtime.GC()
	debug.FreeOSMemory()
	return before, Held()
}

// Held is the memory the Go runtime has mapped and not returned to the kernel: heap, stacks
// and its own metadata.
func Held() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

func mb(b uint64) string { return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) }
