package harness

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"ambit.dev/bench/internal/load"
)

// profile samples the two ztunnels' CPU with perf (software clock, call graphs) under the
// ambit-l4 load at 16 connections, and reads their memory split from smaps_rollup and from
// the Go runtime's own account (/debug/pprof/heap on the admin port); the result is a
// Markdown note. perf rather than the admin port's CPU profile: perf sees the kernel too.
func (r *runner) profile(ctx context.Context) (string, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return "", fmt.Errorf("perf is not installed (Debian package linux-perf)")
	}
	if err := r.enrol(ctx, true); err != nil {
		return "", err
	}
	defer func() { _ = r.enrol(ctx, false) }()
	var pids []string
	for _, n := range r.state.Nodes {
		pids = append(pids, strconv.Itoa(n.Ztunnel.PID))
	}
	data := filepath.Join(r.cfg.LabDir, "perf.data")
	rec := exec.CommandContext(ctx, perf, "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p", strings.Join(pids, ","),
		"-o", data, "--", "sleep", fmt.Sprint(r.cfg.ProfileDuration.Seconds()))
	var recErr bytes.Buffer
	rec.Stderr = &recErr
	if err := rec.Start(); err != nil {
		return "", err
	}
	conns := 16
	res, lerr := r.load(ctx, load.Config{Mode: load.HTTP, Target: fmt.Sprintf("http://%s:%d/", r.server.IP, httpPort), QPS: r.cfg.QPS,
		Connections: conns, Duration: r.cfg.ProfileDuration - time.Second})
	if err := rec.Wait(); err != nil {
		return "", fmt.Errorf("perf record: %v: %s", err, recErr.String())
	}
	if lerr != nil {
		return "", lerr
	}
	report := func(args ...string) ([]symbol, error) {
		out, err := exec.CommandContext(ctx, perf, append([]string{"report", "-i", data, "--stdio", "--no-children", "-g", "none"}, args...)...).Output()
		if err != nil {
			return nil, fmt.Errorf("perf report %v: %w", args, err)
		}
		return parseReport(out), nil
	}
	dsos, err := report("--sort", "dso")
	if err != nil {
		return "", err
	}
	// user space alone, as shares of ztunnel's own code: the lab runs each node's own copy of
	// the binary (ztunnel-<node>), so the DSOs are named after the files perf saw
	var ztunnels []string
	for _, d := range dsos {
		if strings.HasPrefix(d.name, "ztunnel") {
			ztunnels = append(ztunnels, d.name)
		}
	}
	if len(ztunnels) == 0 {
		return "", fmt.Errorf("perf report: no ztunnel binary among the sampled DSOs %v", dsos)
	}
	user, err := report("--sort", "symbol", "--dsos", strings.Join(ztunnels, ","), "--percentage", "relative")
	if err != nil {
		return "", err
	}
	user = mergeSymbols(user) // one line per symbol for the two binaries
	var b strings.Builder
	fmt.Fprintf(&b, "### Where ztunnel's CPU goes\n\n`perf record -e cpu-clock -F 999 -g` on both ztunnels for %s under the ambit-l4 load "+
		"(%.0f req/s over %d connections, %.0f achieved); perf reads the Go symbol table and, unlike Go's own profiler, sees the kernel. "+
		"The machine is a VM without hardware counters, so kernel samples land where interrupts are re-enabled "+
		"(`_raw_spin_unlock_irqrestore`, `finish_task_switch`) rather than where the time went; the kernel/user split holds.\n\n",
		r.cfg.ProfileDuration, r.cfg.QPS, conns, res.Latency.QPS)
	b.WriteString("| share of ztunnel CPU | in |\n|--:|---|\n")
	for _, d := range dsos {
		if d.pct >= 0.5 {
			name := d.name
			if strings.Contains(name, "kernel") {
				name += " (the kernel: syscalls, TCP/IP, iptables, scheduling, on ztunnel's behalf)"
			}
			fmt.Fprintf(&b, "| %.1f%% | `%s` |\n", d.pct, name)
		}
	}
	b.WriteString("\nztunnel's own code (user space = 100%) by kind of work:\n\n| share | kind |\n|--:|---|\n")
	for i, pct := range categorize(user) {
		if i == 0 {
			continue // kernel: not in this view
		}
		fmt.Fprintf(&b, "| %.1f%% | %s |\n", pct, categories[i].name)
	}
	b.WriteString("\nIts symbols at 1.5% or more of user space:\n\n| self % | symbol |\n|--:|---|\n")
	for i, s := range user {
		if s.pct < 1.5 || i >= 20 {
			break
		}
		fmt.Fprintf(&b, "| %.1f%% | `%s` |\n", s.pct, s.name)
	}
	b.WriteString("\n### Where ztunnel's memory goes\n\nFrom /proc/<pid>/smaps_rollup at the end of the run:\n\n")
	b.WriteString("| ztunnel | RSS MB | anonymous (heap, stacks) MB | file-backed (binary text, data) MB | peak RSS MB |\n|---|--:|--:|--:|--:|\n")
	for _, n := range r.state.Nodes {
		m, err := smapsRollup(n.Ztunnel.PID)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f |\n", n.Name, mb(m["Rss"]), mb(m["Anonymous"]), mb(m["Rss"]-m["Anonymous"]), mb(hwm(n.Ztunnel.PID)))
	}
	if fi, err := os.Stat(filepath.Join(r.cfg.BinDir, "ztunnel")); err == nil {
		fmt.Fprintf(&b, "\nThe file-backed part is the touched pages of the %.0f MB ztunnel binary (code and read-only data, "+
			"each node's own copy, as each node of a cluster has its own image, and reclaimable by the kernel: ztunnel gives back the pages only its start-up used, --page-out-after); the anonymous part is Go's heap, stacks and runtime. "+
			"Against the 12 MB target the anonymous part is what the code controls.\n", mb(fi.Size()))
	}
	b.WriteString("\nThe Go runtime's own account of it (`runtime.MemStats`, read from `/debug/pprof/heap?debug=1` on each ztunnel's admin port):\n\n")
	b.WriteString("| ztunnel | heap in use MB | goroutine stacks MB | runtime metadata (spans, GC, other) MB | obtained from the OS MB | heap released to the OS MB |\n|---|--:|--:|--:|--:|--:|\n")
	for _, n := range r.state.Nodes {
		m, err := goMemStats(ctx, n.AdminAddr)
		if err != nil {
			return "", fmt.Errorf("ztunnel %s: %w", n.Name, err)
		}
		meta := m["MSpanInuse"] + m["MCacheInuse"] + m["GCSys"] + m["BuckHashSys"] + m["OtherSys"]
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n", n.Name, mb(int64(m["HeapInuse"])), mb(int64(m["StackInuse"])),
			mb(int64(meta)), mb(int64(m["Sys"])), mb(int64(m["HeapReleased"])))
	}
	return b.String(), nil
}

// goMemStats reads the runtime.MemStats lines ("# Name = value", or "# Name = inuse / sys"
// for Stack, MSpan and MCache) at the end of the text heap profile that a ztunnel serves on
// its admin port.
func goMemStats(ctx context.Context, admin string) (map[string]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/debug/pprof/heap?debug=1", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("heap profile: %s", resp.Status)
	}
	return parseMemStats(resp.Body)
}

func parseMemStats(r io.Reader) (map[string]uint64, error) {
	out := map[string]uint64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "# "), " = ")
		if !ok || strings.ContainsAny(name, " \t") {
			continue
		}
		// "# Stack = 393216 / 393216" is in use / obtained: StackInuse and StackSys.
		if inuse, sys, ok := strings.Cut(val, " / "); ok {
			a, err1 := strconv.ParseUint(inuse, 10, 64)
			b, err2 := strconv.ParseUint(sys, 10, 64)
			if err1 == nil && err2 == nil {
				out[name+"Inuse"], out[name+"Sys"] = a, b
			}
			continue
		}
		if v, err := strconv.ParseUint(val, 10, 64); err == nil {
			out[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := out["HeapInuse"]; !ok {
		return nil, fmt.Errorf("heap profile has no runtime.MemStats (HeapInuse)")
	}
	return out, nil
}

// symbol is one line of `perf report --stdio -g none --sort symbol`:
// "  12.34%  [.] symbol" ([k] for the kernel).
type symbol struct {
	pct    float64
	kernel bool
	name   string
}

func parseReport(out []byte) []symbol {
	var syms []symbol
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		// -g none leaves "-" placeholders after the symbol
		for len(f) > 2 && f[len(f)-1] == "-" {
			f = f[:len(f)-1]
		}
		s := symbol{pct: pct, name: strings.Join(f[1:], " ")}
		switch {
		case strings.HasPrefix(s.name, "[k] "):
			s.kernel, s.name = true, strings.TrimPrefix(s.name, "[k] ")
		case strings.HasPrefix(s.name, "[.] "):
			s.name = strings.TrimPrefix(s.name, "[.] ")
		}
		syms = append(syms, s)
	}
	return syms
}

// Categories of CPU time, in the order the doc lists them. The first that matches wins.
var categories = []struct {
	name  string
	match func(symbol) bool
}{
	{"kernel: syscalls, TCP/IP, scheduling, iptables", func(s symbol) bool { return s.kernel }},
	{"TLS and crypto (AES-GCM, ECDSA, hashing)", func(s symbol) bool {
		return containsAny(s.name, "crypto/", "aes", "gcm", "sha256", "p256", "tls.")
	}},
	{"Go GC and allocation", func(s symbol) bool {
		return containsAny(s.name, "runtime.gc", "runtime.scan", "runtime.mallocgc", "runtime.(*mspan)", "runtime.(*mheap)",
			"runtime.(*mcache)", "runtime.greyobject", "runtime.markBits", "runtime.findObject", "runtime.heapBits",
			"runtime.memclr", "runtime.wbBuf", "runtime.bgsweep", "runtime.sweepone", "runtime.(*gcWork)", "runtime.typePointers", "runtime.newobject", "runtime.makeslice")
	}},
	{"Go scheduler, netpoll, timers, syscall entry", func(s symbol) bool {
		return containsAny(s.name, "runtime.schedule", "runtime.findRunnable", "runtime.netpoll", "runtime.futex", "runtime.park",
			"runtime.stealWork", "runtime.mcall", "runtime.usleep", "runtime.nanotime", "runtime.runqgrab", "runtime.lock", "runtime.unlock",
			"runtime.notesleep", "runtime.ready", "runtime.goready", "runtime.casgstatus", "runtime.execute", "runtime.gopark",
			"runtime.entersyscall", "runtime.exitsyscall", "runtime.(*timers)", "runtime.checkTimers", "runtime.resetspinning",
			"runtime.wakep", "runtime.startm", "runtime.stopm", "runtime.epoll", "syscall.", "internal/runtime/syscall", "internal/poll")
	}},
	{"HTTP/2 and HBONE framing", func(s symbol) bool { return containsAny(s.name, "http2", "hbone", "hpack") }},
	{"everything else (copying, maps, other Go code)", func(symbol) bool { return true }},
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// mergeSymbols adds up the lines of one symbol (perf lists it once per binary that ran it)
// and sorts them by share, largest first.
func mergeSymbols(syms []symbol) []symbol {
	var out []symbol
	at := map[string]int{}
	for _, s := range syms {
		if i, ok := at[s.name]; ok {
			out[i].pct += s.pct
			continue
		}
		at[s.name] = len(out)
		out = append(out, s)
	}
	slices.SortStableFunc(out, func(a, b symbol) int { return cmp.Compare(b.pct, a.pct) })
	return out
}

// categorize sums self time by category.
func categorize(syms []symbol) []float64 {
	sums := make([]float64, len(categories))
	for _, s := range syms {
		for i, c := range categories {
			if c.match(s) {
				sums[i] += s.pct
				break
			}
		}
	}
	return sums
}

func smapsRollup(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] == "kB" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			m[strings.TrimSuffix(f[0], ":")] = v * 1024
		}
	}
	return m, nil
}

func hwm(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v * 1024
		}
	}
	return 0
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// methodNotes explains how the figures are made, and what is not measured yet.
func (r *runner) methodNotes() []string {
	notes := []string{`### How the figures are made

- One run, one lab (bench/lab.yaml): a client pod on node-a, a server pod on node-b, each a network namespace on the lab bridge. The server pod runs the harness's own server (` + "`bench serve`" + `: every GET answered with a 1 KB body; a TCP source for the bulk test), not the lab's http-echo, which asks its ztunnel about every caller.
- Load: fortio's library (fhttp, periodic) in a process started inside the client pod (` + "`ip netns exec … bench load`" + `), HTTP/1.1 keep-alive, a fixed rate split evenly over the connections (fortio ` + "`-uniform`" + `, catching up after a slow call). Every request's latency is recorded exactly through fortio's access-logger hook; percentiles are nearest-rank over all of them. Latency is from the start of each call (fortio's definition), so a stall that delays later calls is under-counted (coordinated omission), equally for every scenario.
- ` + "`direct`" + `: the namespace is not enrolled, plain pod to pod. ` + "`ambit-l4`" + `: ` + "`bin/ambitctl namespace enable bench`" + `, so the client's ztunnel captures the connection and carries it over HBONE (TLS 1.3 mTLS, HTTP/2 CONNECT) to the server's ztunnel. ` + "`ambit-l4-h3`" + `: the same, with the namespace also labelled ` + "`ambit.dev/tunnel-protocol=hbone-h3`" + `, so that the ztunnels carry it over HBONE on HTTP/3 (QUIC on UDP 15008, TLS 1.3 mTLS); measured only once the client's new connections count as ` + "`HBONE_H3`" + ` in its ztunnel's metrics, so a silent fallback to HTTP/2 cannot pass for it. ` + "`ambit-l7`" + `: enrolled, and the server's service account bound to a waypoint (` + "`bench-wp`" + `, in a pod of its own on the server's node): the client's ztunnel sends the connection over HBONE to the waypoint, which parses each HTTP request and opens HBONE to the server's ztunnel; proxy CPU and RSS are of the two ztunnels and the waypoint, and the waypoint's own figures are judged against its targets. The peers: the namespace out of the mesh again, and a pair of the peer in the pods. ` + "`istio-go-hbone`" + `: Istio's own Go HBONE (istio.io/istio/pkg/hbone, the implementation Istio's Go ztunnel had before Istio moved to Rust), its dialer in the client pod carrying each connection as an HTTP/2 CONNECT over pooled mutual-TLS connections to its server in the server pod, both checking SPIFFE identities (compat/istio/cmd/istio-hbone-peer). ` + "`haproxy-mtls`" + `, ` + "`nginx-mtls`" + ` and ` + "`stunnel-mtls`" + ` (Debian's HAProxy in TCP mode; nginx with its stream module, a master and a worker per CPU; stunnel4, a thread per connection): the client-side one listens on the client pod's loopback and originates TLS 1.3 with a SPIFFE SVID signed by the lab's CA (with a DNS name beside the SPIFFE ID, which nginx's and stunnel's clients check; none of them can match a SPIFFE ID), the server-side one verifies the client certificate and forwards to the app. Two proxies per path, as with the ztunnels; the peers open one TLS connection per client connection where ztunnel multiplexes them over a pooled HBONE connection. nginx's CPU is its master's and workers' together; its memory, like every peer's, the largest process.
- Proxy CPU: utime+stime of the two proxies of the path from /proc/<pid>/stat (their own rusage, all threads) over each latency run, divided by the achieved thousands of requests per second. The ztunnel target is per ztunnel, so the verdict halves the pair's figure. Memory: the larger of the two proxies' resident set, sampled every 100 ms.
- Added p99: a row's p99 (the median over the rounds) less the lowest of direct's p99 over the rounds at the same number of connections. Other work only adds latency, so direct's least disturbed round is the best measure of the path's own tail; against direct's median, bursts in two of its three rounds once put the added p99 below zero. Every scenario is measured against the same figure, so the comparisons between them are those of their p99.
- Throughput: one connection, the server streams, the client counts what it reads for the bulk duration after the first 64 KB. New connections per second: fortio without keep-alive at full speed, one GET per connection.
- Every process the harness starts (the server, each peer proxy, each load generator) leads a session of its own, as the lab's ztunnels, waypoint and controller do; with the kernel's autogroup scheduling on (it is, here), each session is scheduled as one group, as each pod's cgroup is on a node, so no scenario's proxies share a group with the load or with whatever else ran from the shell that started the run.
- The machine has 2 vCPUs shared by the load generator, the server, both proxies and other engineers' work (compilers, tests); latency tails, CPU and throughput are noisy. Each scenario is measured in several rounds, interleaved with the others, and each figure is the median over the rounds, so that a burst of other work decides no comparison on its own; the tail percentiles (p99, p99.9) remain the least stable figures. Compare rows of one run, not runs.`}
	if k := r.cfg.Capacity; len(k.Rates) > 0 {
		notes[0] += fmt.Sprintf("\n- Capacity (in the last round only, after the scenario's other figures, in the same setup): the same GETs at rising fixed rates (%s req/s) over %d keep-alive connections, a `bench load` process of %s per rate, until a rate is not held (p99 over 5 ms, any failed request, or under 95%% of the rate achieved) in %d tries in a row: a burst of other work on the shared machine can fail one step that the path holds. Every try is in the table and in the JSON. The capacity is the highest rate held; \"≥\" when the last rate offered held, \"<\" when the first did not. Every step, with the proxies' CPU over it, is in bench/results/sweeps.json; the plot is bench/results/capacity.png. The load generator and the server share the 2 vCPUs with the proxies, so it is the capacity of the whole path on this machine, not of a proxy alone.",
			joinFloats(k.Rates), k.Connections, k.Step, k.Tries)
	}
	if i := r.cfg.Idle; len(i.Levels) > 0 && len(i.Scenarios) > 0 {
		notes[0] += fmt.Sprintf("\n- Idle tunnels (%s, after all rounds and the profile, each in a setup of its own): `bench load --mode hold`, in the client pod, opens connections through the mesh to an echo port of the server pod's `bench serve`, 64 at a time, each proven end to end by one byte that comes back, and holds them idle; the count rises (%s in all), and %s after each the resident set (VmRSS) of both ztunnels is read. kB per tunnel is the growth over the reading taken just before the first tunnel (%s after the namespace was enrolled, past the give-back that follows a capture), divided by the tunnels held: noise at the small counts (the Go heap and its GC pacing move by hundreds of kB on their own), the figure at the large ones. The holder closes them all when the harness ends its input (or by itself after a deadline), and the harness waits until the ztunnels have let the files go. The memory of closed tunnels stays in a ztunnel's Go heap, to be reused, so the sweeps come after every other figure, and before each sweep but the first both ztunnels are replaced by new processes (as a rolling update does: the new one takes the pods over); otherwise the second sweep's tunnels would grow into the first's freed heap. The rows are in bench/results/sweeps.json; the plot is bench/results/idle.png.",
			strings.Join(i.Scenarios, " and "), joinInts(i.Levels), i.Settle, i.baselineWait())
	}
	if len(r.skipped) > 0 {
		var b strings.Builder
		b.WriteString("### Not measured in this run\n\n")
		for _, s := range AllScenarios {
			if why, ok := r.skipped[s]; ok {
				fmt.Fprintf(&b, "- `%s`: %s.\n", s, why)
			}
		}
		notes = append(notes, b.String())
	}
	return notes
}
