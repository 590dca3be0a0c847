package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"ambit.dev/bench/internal/load"
	"ambit.dev/bench/internal/proc"
	"ambit.dev/bench/internal/report"
	"ambit.dev/controller/lab"
)

type runner struct {
	cfg      Config
	out      io.Writer
	state    *lab.State
	client   *lab.PodState
	server   *lab.PodState
	enrolled bool
	opts     lab.Options
	skipped  map[string]string
	notes    []string
	// sweeps are those of the last round (Config.Capacity, Config.Idle).
	sweeps report.Sweeps
}

// Run performs the benchmark and writes its results. The lab is brought down at the end,
// also when a scenario fails.
func Run(ctx context.Context, cfg Config) (rows []report.Row, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Scenarios) == 0 {
		cfg.Scenarios = AllScenarios
	}
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	r := &runner{cfg: cfg, out: out, skipped: map[string]string{}}
	topo, err := lab.LoadTopology(cfg.Topology)
	if err != nil {
		return nil, err
	}
	opts := lab.Options{Dir: cfg.LabDir, BinDir: cfg.BinDir, Ambitctl: filepath.Join(cfg.BinDir, "ambitctl"),
		Prefix: cfg.LabPrefix, PortBase: cfg.LabPortBase, Out: out}
	// a lab left by an interrupted run goes first, so every run starts from the same state
	if err := lab.Down(ctx, opts); err != nil {
		return nil, err
	}
	r.opts = opts
	r.state, err = lab.Up(ctx, topo, opts)
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if derr := lab.Down(dctx, opts); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	if err != nil {
		return nil, err
	}
	if r.client, err = r.state.Pod("bench", "client"); err != nil {
		return nil, err
	}
	if r.server, err = r.state.Pod("bench", "server"); err != nil {
		return nil, err
	}
	srv, err := r.startIn(r.server, "bench-server", r.cfg.Self, "serve", "--http", fmt.Sprintf(":%d", httpPort),
		"--bulk", fmt.Sprintf(":%d", bulkPort), "--echo", fmt.Sprintf(":%d", echoPort), "--size", "1024")
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	if err := waitFor(ctx, 10*time.Second, "bench server", func() error {
		if srv.exited() {
			return fmt.Errorf("exited; see %s", srv.log)
		}
		c, err := lab.DialIn(r.client.NetNS, fmt.Sprintf("%s:%d", r.server.IP, httpPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return nil, err
	}

	var rounds [][]report.Row
	for round := 1; round <= cfg.Rounds; round++ {
		var got []report.Row
		for _, name := range cfg.Scenarios {
			if _, skipped := r.skipped[name]; skipped {
				continue
			}
			fmt.Fprintf(out, "bench: round %d of %d: %s\n", round, cfg.Rounds, name)
			rs, err := r.scenario(ctx, name, round == cfg.Rounds)
			var skip errSkip
			if errors.As(err, &skip) {
				r.skipped[name] = skip.reason
				fmt.Fprintf(out, "bench: %s skipped: %s\n", name, skip.reason)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("scenario %s: %w", name, err)
			}
			got = append(got, rs...)
		}
		rounds = append(rounds, got)
	}
	rows = report.Combine(rounds)
	report.FillCapacity(rows, r.sweeps.Capacity)
	if cfg.Profile && contains(cfg.Scenarios, report.AmbitL4) {
		note, err := r.profile(ctx)
		if err != nil {
			note = "Profile: not taken (" + err.Error() + ")."
		}
		r.notes = append(r.notes, note)
	}
	r.idleSweeps(ctx)
	return rows, r.write(rows)
}

// scenario measures one scenario, and in the last round (sweep) its capacity too.
func (r *runner) scenario(ctx context.Context, name string, sweep bool) ([]report.Row, error) {
	e, err := r.setup(ctx, name)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := e.teardown(ctx); err != nil {
			fmt.Fprintf(r.out, "bench: %s teardown: %v\n", name, err)
		}
	}()
	if r.cfg.Warmup > 0 {
		if _, err := r.load(ctx, load.Config{Mode: load.HTTP, Target: e.url, QPS: r.cfg.QPS,
			Connections: r.cfg.Connections[len(r.cfg.Connections)-1], Duration: r.cfg.Warmup}); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	var rows []report.Row
	for _, conns := range r.cfg.Connections {
		m := proc.NewMeter(100*time.Millisecond, e.proxies...)
		if err := m.Start(); err != nil {
			return nil, err
		}
		var wm *proc.Meter
		if e.waypoint != 0 {
			wm = proc.NewMeter(100*time.Millisecond, e.waypoint)
			if err := wm.Start(); err != nil {
				return nil, err
			}
		}
		res, err := r.load(ctx, load.Config{Mode: load.HTTP, Target: e.url, QPS: r.cfg.QPS, Connections: conns, Duration: r.cfg.Duration})
		u, merr := m.Stop()
		var wu proc.Usage
		if wm != nil {
			var werr error
			if wu, werr = wm.Stop(); merr == nil {
				merr = werr
			}
		}
		if err != nil {
			return nil, err
		}
		if merr != nil {
			return nil, fmt.Errorf("proxy usage: %w", merr)
		}
		l := res.Latency
		row := report.Row{Scenario: name, Connections: conns, QPS: report.Round(l.QPS, 1), P50: l.P50, P90: l.P90, P99: l.P99,
			P999: l.P999, Errors: l.Errors}
		if len(e.proxies) > 0 && l.QPS > 0 {
			vcpu := u.CPU.Seconds() / u.Elapsed.Seconds()
			row.CPUPer1k = report.Round(vcpu/(l.QPS/1000), 4)
			row.RSSMB = report.Round(float64(u.PeakRSS)/(1<<20), 1)
			if wm != nil {
				row.WaypointCPUPer1k = report.Round(wu.CPU.Seconds()/wu.Elapsed.Seconds()/(l.QPS/1000), 4)
				row.WaypointRSSMB = report.Round(float64(wu.PeakRSS)/(1<<20), 1)
			}
		}
		fmt.Fprintf(r.out, "bench: %s %d conn: %.0f req/s p50 %.0f p99 %.0f p99.9 %.0f µs, %d errors, proxies %.3f vCPU/1k, %.1f MB\n",
			name, conns, l.QPS, l.P50, l.P99, l.P999, l.Errors, row.CPUPer1k, row.RSSMB)
		rows = append(rows, row)
	}
	bulk, err := r.load(ctx, load.Config{Mode: load.Bulk, Target: e.bulk, Duration: r.cfg.BulkDuration})
	if err != nil {
		return nil, err
	}
	churn, err := r.load(ctx, load.Config{Mode: load.Churn, Target: e.url, Connections: r.cfg.ChurnConnections, Duration: r.cfg.ChurnDuration})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(r.out, "bench: %s: %.2f Gbps on one connection, %.0f new connections/s (%d errors)\n",
		name, bulk.Gbps, churn.ConnPerSec, churn.Latency.Errors)
	for i := range rows {
		rows[i].ThroughputGbps = report.Round(bulk.Gbps, 3)
		rows[i].ConnPerSec = report.Round(churn.ConnPerSec, 0)
	}
	if !sweep {
		return rows, nil
	}
	if len(r.cfg.Capacity.Rates) > 0 {
		steps, err := r.capacity(ctx, name, e)
		r.sweeps.Capacity = append(r.sweeps.Capacity, steps...)
		if err != nil {
			return nil, fmt.Errorf("capacity sweep: %w", err)
		}
	}
	return rows, nil
}

// load runs `bench load` inside the client pod and returns what it measured.
func (r *runner) load(ctx context.Context, c load.Config) (load.Result, error) {
	args := []string{"netns", "exec", filepath.Base(r.client.NetNS), r.cfg.Self, "load", "--mode", string(c.Mode),
		"--target", c.Target, "--duration", c.Duration.String()}
	if c.QPS > 0 {
		args = append(args, "--qps", strconv.FormatFloat(c.QPS, 'f', -1, 64))
	}
	if c.Connections > 0 {
		args = append(args, "--connections", strconv.Itoa(c.Connections))
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	ownSession(cmd)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return load.Result{}, fmt.Errorf("load %s %s: %v\n%s", c.Mode, c.Target, err, stderr.String())
	}
	var res load.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return load.Result{}, fmt.Errorf("load %s: result: %w\n%s", c.Mode, err, stdout.String())
	}
	return res, nil
}

// ownSession starts cmd in a session of its own, as the lab starts ztunnel and the
// controller (controller/lab), and has the kernel kill it if the harness dies first. On a
// kernel with autogroup scheduling (CONFIG_SCHED_AUTOGROUP, on by default in most
// distributions' kernels and on this project's machine), each session is scheduled as one
// group against the others, as each pod's cgroup is on a Kubernetes node. Before this, the
// peers shared the harness's group with the load generator, the server and whatever else the
// shell that ran the bench had started, while the ztunnels each had their own: under
// CPU-bound neighbours started from the same shell, the ztunnels' wake-ups waited behind the
// neighbours' group and the peers' did not (docs/benchmarks.md, 2026-12-06). Every process
// of every scenario now has a group of its own, so no scenario's proxies share the
// scheduler's attention with the load.
func ownSession(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
}

// process is a long-running helper the harness started inside a pod.
type process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	dead atomic.Bool
}

func (r *runner) startIn(pod *lab.PodState, name, bin string, args ...string) (*process, error) {
	// outside the lab dir, which lab down removes: a helper's log must outlive a failed run
	dir := filepath.Join(os.TempDir(), "ambit-bench-logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	log := filepath.Join(dir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", filepath.Base(pod.NetNS), bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	ownSession(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.dead.Store(true)
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool { return p.dead.Load() }

func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

func waitFor(ctx context.Context, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// write puts the rows, the plot and the doc section in place.
func (r *runner) write(rows []report.Row) error {
	if err := os.MkdirAll(r.cfg.ResultsDir, 0o755); err != nil {
		return err
	}
	var js bytes.Buffer
	if err := report.WriteJSON(&js, rows); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.cfg.ResultsDir, "latest.json"), js.Bytes(), 0o644); err != nil {
		return err
	}
	files, err := report.WriteDrawings(r.cfg.ResultsDir, report.Drawing{File: "latency.png", Draw: func(w io.Writer) error {
		return report.Plot(w, rows, fmt.Sprintf("ambit bench: latency at %.0f req/s (%s)", r.cfg.QPS, time.Now().UTC().Format("2006-01-02")))
	}})
	if err != nil {
		return err
	}
	fmt.Fprintf(r.out, "bench: wrote %s and %s\n", filepath.Join(r.cfg.ResultsDir, "latest.json"), files[0])
	if err := r.writeSweeps(); err != nil {
		return err
	}
	if r.cfg.Doc == "" {
		return nil
	}
	settings := fmt.Sprintf("%d rounds, scenarios interleaved, each figure the median over the rounds; per round %.0f req/s of GET with a 1 KB reply over %s keep-alive connections, %s each; bulk %s on one connection; churn %s over %d connections",
		r.cfg.Rounds, r.cfg.QPS, joinInts(r.cfg.Connections), r.cfg.Duration, r.cfg.BulkDuration, r.cfg.ChurnDuration, r.cfg.ChurnConnections)
	if r.cfg.Warmup > 0 {
		settings += fmt.Sprintf("; before its first run each scenario is warmed up for %s at the same rate over %d connections", r.cfg.Warmup, r.cfg.Connections[len(r.cfg.Connections)-1])
	}
	if k := r.cfg.Capacity; len(k.Rates) > 0 {
		settings += fmt.Sprintf("; in the last round, capacity at %s req/s over %d connections, %s each, until one is not held", joinFloats(k.Rates), k.Connections, k.Step)
	}
	if i := r.cfg.Idle; len(i.Levels) > 0 && len(i.Scenarios) > 0 {
		settings += fmt.Sprintf("; after the rounds, idle tunnels in %s: %s held, read %s after each", strings.Join(i.Scenarios, " and "), joinInts(i.Levels), i.Settle)
	}
	meta := report.Meta{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Machine: machine(), Command: r.cfg.Command,
		Settings: settings, Notes: append(r.methodNotes(), r.notes...)}
	// re-read right before writing: another section of the file is edited by others
	old, err := os.ReadFile(r.cfg.Doc)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc, err := report.Splice(string(old), report.Section(rows, r.sweeps, meta))
	if err != nil {
		return err
	}
	if err := os.WriteFile(r.cfg.Doc, []byte(doc), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(r.out, "bench: wrote the make bench section of %s\n", r.cfg.Doc)
	return nil
}

// writeSweeps writes sweeps.json and the plots of the sweeps that ran.
func (r *runner) writeSweeps() error {
	var js bytes.Buffer
	if err := report.WriteSweeps(&js, r.sweeps); err != nil {
		return err
	}
	files := []string{filepath.Join(r.cfg.ResultsDir, "sweeps.json")}
	if err := os.WriteFile(files[0], js.Bytes(), 0o644); err != nil {
		return err
	}
	date := time.Now().UTC().Format("2006-01-02")
	var plots []report.Drawing
	if len(r.sweeps.Capacity) > 0 {
		plots = append(plots, report.Drawing{File: "capacity.png", Draw: func(w io.Writer) error {
			return report.PlotCapacity(w, r.sweeps.Capacity, fmt.Sprintf("ambit bench: p99 against offered rate, %d connections (%s)", r.cfg.Capacity.Connections, date))
		}})
	}
	if len(r.sweeps.Idle) > 0 {
		plots = append(plots, report.Drawing{File: "idle.png", Draw: func(w io.Writer) error {
			return report.PlotIdle(w, r.sweeps.Idle, fmt.Sprintf("ambit bench: ztunnel memory against idle tunnels held (%s)", date))
		}})
	}
	written, err := report.WriteDrawings(r.cfg.ResultsDir, plots...)
	if err != nil {
		return err
	}
	files = append(files, written...)
	fmt.Fprintf(r.out, "bench: wrote %s\n", strings.Join(files, ", "))
	return nil
}

func joinFloats(v []float64) string {
	s := make([]string, len(v))
	for i, f := range v {
		s[i] = strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strings.Join(s, ", ")
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	hap := "not installed"
	if out, err := exec.Command("haproxy", "-v").Output(); err == nil {
		hap = strings.Fields(strings.SplitN(string(out), "\n", 2)[0])[2]
	}
	return fmt.Sprintf("%s, %d vCPU (shared with other work while it ran), Linux %s, %s, HAProxy %s",
		model, runtime.NumCPU(), kernel, runtime.Version(), hap)
}
