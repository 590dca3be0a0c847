// Package sysmon keeps the Go runtime's system monitor from sleeping deeply between a
// proxy's bursts of work, because on a proxy waking it costs more than it watches.
//
// The monitor (sysmon) is a thread of its own that, while any processor runs Go code,
// wakes every 20 µs to 10 ms to take processors back from threads stuck in system calls
// and preempt long-running goroutines. When every processor is idle it sleeps until the
// next system call made through the scheduler (syscall.Syscall: accept, connect, close,
// shutdown, setsockopt, setns) wakes it with a futex, and then polls every 20 µs again for a
// millisecond. A proxy that opens connections is idle for microseconds between them, so
// every connection woke it and paid for a dozen timer sleeps: a tenth of ztunnel's CPU while
// it accepted new connections as fast as it could (perf; golang/go#18236 describes the
// same cost). The runtime keeps the monitor out of deep sleep only while a scheduler trace
// is asked for, and reads that setting (GODEBUG schedtrace) once, when the process starts;
// so KeepAwake starts the program again, in the same process, with the longest trace
// interval the setting takes (2^31-1 ms, 24.8 days), and the monitor backs off to one wake
// every 10 ms when there is nothing to do. docs/benchmarks.md has the A/B.
//
// What it costs: a start-up that runs the binary's initialisation twice; 100 monitor
// wake-ups a second while the proxy is idle; one scheduler line (SCHED …) on standard error
// at start when the node has been up for more than 24.8 days, and every 24.8 days after;
// and a scheduler dump before the goroutine traces if the proxy crashes. A schedtrace
// already in GODEBUG (schedtrace=0 restores Go's default) is left as it is.
package sysmon

import (
	"os"
	"strings"
	"syscall"
)

// Setting is the GODEBUG entry KeepAwake adds.
const Setting = "schedtrace=2147483647"

// KeepAwake replaces the running program with itself, the same arguments and environment,
// and Setting added to GODEBUG, unless GODEBUG already sets schedtrace: then (in the program
// started again, or when the operator chose) it returns nil at once. Otherwise it returns
// only if the program could not be started again, with the reason; the caller goes on
// with Go's default.
func KeepAwake() error {
	godebug, set := os.LookupEnv("GODEBUG")
	if set && hasSetting(godebug, "schedtrace") {
		return nil
	}
	// /proc/self/exe, not os.Args[0]: the very file running, even if its path has changed.
	return syscall.Exec("/proc/self/exe", os.Args, withSetting(os.Environ(), Setting))
}

// hasSetting reports whether a GODEBUG value (comma-separated key=value) sets key.
func hasSetting(godebug, key string) bool {
	for _, f := range strings.Split(godebug, ",") {
		if k, _, ok := strings.Cut(f, "="); ok && strings.TrimSpace(k) == key {
			return true
		}
	}
	return false
}

// withSetting returns env with setting appended to its GODEBUG entry, or a GODEBUG entry of
// setting alone when it has none (or an empty one).
func withSetting(env []string, setting string) []string {
	out := make([]string, 0, len(env)+1)
	done := false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok && !done {
			if v != "" {
				setting = v + "," + setting
			}
			out = append(out, "GODEBUG="+setting)
			done = true
			continue
		}
		out = append(out, kv)
	}
	if !done {
		out = append(out, "GODEBUG="+setting)
	}
	return out
}
