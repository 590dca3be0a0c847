// Package gcpercent sets a proxy's garbage-collection target: how far the heap may grow
// past what is live before the collector runs (Go's GOGC).
package gcpercent

import (
	"os"
	"runtime/debug"
)

// Ztunnel is ztunnel's default: the heap may grow by half of what is live, not by all of it
// (Go's default of 100). ztunnel's live heap is mostly buffers in flight, it allocates about
// 110 bytes per request, so its collector costs it under 2 % of its CPU, and its peak
// resident set is a figure users compare. The waypoint, which allocates for every HTTP
// request it parses, keeps Go's default: at 50 it spent 5-15 % more CPU. docs/benchmarks.md
// has both A/Bs.
const Ztunnel = 50

// Apply sets the target to def unless the GOGC environment variable sets one (which the
// runtime has read), and returns the target in force.
func Apply(def int) int {
	if os.Getenv("GOGC") != "" {
		cur := debug.SetGCPercent(100)
		debug.SetGCPercent(cur)
		return cur
	}
	debug.SetGCPercent(def)
	return def
}
