// Package heapsample turns the heap profile's sampling off in the proxy that imports it, from
// its first package initialisers on, unless GODEBUG=memprofilerate=N asks for it.
//
// Go samples one allocation per 512 KiB by default: it walks the allocating stack each time
// and keeps a bucket per distinct stack, in a hash table of its own, so a proxy's resident set
// carries the table's touched pages and the buckets for a profile nobody may ever read.
// Envoy and the Rust ztunnel profile their heaps only when asked to; so do the proxies, with
// GODEBUG=memprofilerate=524288 (Go's default rate) in their environment, after which
// /debug/pprof/heap on the admin port has its samples again. The runtime's own account
// (/debug/pprof/heap?debug=1, runtime.MemStats) is there either way.
//
// Import it for its side effect, from the command's main package: its initialiser runs early
// (packages start in the order of their import paths, once their own imports have), before the
// big initialisers of the protobuf, gRPC and Kubernetes packages allocate.
package heapsample

import (
	"runtime"
	"strings"
	"syscall"
)

func init() {
	godebug, _ := syscall.Getenv("GODEBUG")
	if !Requested(godebug) {
		runtime.MemProfileRate = 0
	}
}

// Requested reports whether a GODEBUG value sets memprofilerate, which the runtime has then
// applied: the sampling it asks for stays.
func Requested(godebug string) bool {
	for kv := range strings.SplitSeq(godebug, ",") {
		if k, _, ok := strings.Cut(kv, "="); ok && strings.TrimSpace(k) == "memprofilerate" {
			return true
		}
	}
	return false
}
