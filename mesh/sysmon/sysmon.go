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
//
// What it asks of the proxy: no long blocking system call. With one processor
// (mesh/maxprocs), a thread blocked in a system call keeps it until the monitor takes it
// back; woken by the call, the deep-sleeping monitor does so within tens of microseconds,
// but awake and backed off it looks only every 10 ms, and every goroutine waits that long.
// The first try of this package was reverted for that: ztunnel's capture check waited for
// iptables-save in waitid, and the p99.9 of 1,000 req/s went from 3 to 12–36 ms. ztunnel now
// waits for its programs through the network poller (a pidfd, capture.runProgram); what
// remains blocking is short (a vfork until the program's exec, the start-up page-out's
// madvise, 1–3 ms once). docs/benchmarks.md has both measurements.
package sysmon

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Setting is the GODEBUG entry KeepAwake adds.
const Setting = "schedtrace=2147483647"

// KeepAwake replaces the running program with itself, the same arguments and environment,
// and Setting added to GODEBUG, unless GODEBUG already sets schedtrace: then (in the program
// started again, or when the operator chose) it returns nil at once. Otherwise it returns
// only if the program could not be started again, with the reason (naming Setting); the
// caller goes on with Go's default.
func KeepAwake() error {
	godebug, set := os.LookupEnv("GODEBUG")
	if set && hasSetting(godebug, "schedtrace") {
		restoreName()
		return nil
	}
	// /proc/self/exe, not os.Args[0]: the very file running, even if its path has changed.
	err := syscall.Exec("/proc/self/exe", os.Args, withSetting(os.Environ(), Setting))
	return fmt.Errorf("start again with GODEBUG=%s: %w", Setting, err)
}

// restoreName gives the process its name back after the new start: the kernel names a
// process after the file it executes, here "exe" (/proc/self/exe), which is what ps, top and
// pgrep would show. Every thread is renamed (the runtime's first threads exist already;
// later ones take the name of the thread that makes them). Nothing changes when the name is
// not "exe", or the program's own name is.
func restoreName() {
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "exe" || len(os.Args) == 0 {
		return
	}
	name := filepath.Base(os.Args[0])
	if name == "exe" || name == "." || name == "/" {
		return
	}
	if len(name) > 15 { // the kernel keeps 15 bytes (TASK_COMM_LEN 16, with the NUL)
		name = name[:15]
	}
	tasks, _ := filepath.Glob("/proc/self/task/*/comm")
	for _, t := range tasks {
		_ = os.WriteFile(t, []byte(name), 0)
	}
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
