package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"ambit.dev/bench/internal/load"
	"ambit.dev/bench/internal/proc"
	"ambit.dev/bench/internal/report"
	"ambit.dev/controller/lab"
	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/memreturn"
)

// echoPort is where the server pod's `bench serve` echoes, for the idle-tunnel sweep.
const echoPort = 9200

// capacity runs the capacity sweep of one scenario: each rate in turn until one is not
// held in Config.Capacity.Tries tries in a row. A load process that fails outright counts
// as a try not held, with why; only the end of ctx ends the run.
func (r *runner) capacity(ctx context.Context, name string, e endpoints) ([]report.Step, error) {
	c := r.cfg.Capacity
	var steps []report.Step
	for _, rate := range c.Rates {
		for try := 1; try <= c.Tries; try++ { // at least 1: Validate
			s, err := r.capacityStep(ctx, name, e, rate)
			if err != nil {
				return steps, err
			}
			s.Retry = try > 1
			steps = append(steps, s)
			if s.Held {
				break
			}
		}
		if !steps[len(steps)-1].Held {
			break
		}
	}
	return steps, nil
}

// capacityStep offers one rate of the capacity sweep for Config.Capacity.Step and reports
// the step, with the proxies' CPU over it.
func (r *runner) capacityStep(ctx context.Context, name string, e endpoints, rate float64) (report.Step, error) {
	c := r.cfg.Capacity
	m := proc.NewMeter(100*time.Millisecond, e.proxies...)
	if err := m.Start(); err != nil {
		return report.Step{}, err
	}
	res, err := r.load(ctx, load.Config{Mode: load.HTTP, Target: e.url, QPS: rate, Connections: c.Connections, Duration: c.Step})
	u, merr := m.Stop()
	if ctx.Err() != nil {
		return report.Step{}, ctx.Err()
	}
	if merr != nil {
		return report.Step{}, fmt.Errorf("proxy usage: %w", merr)
	}
	l := res.Latency
	s := report.Step{Scenario: name, Connections: c.Connections, OfferedQPS: rate, QPS: report.Round(l.QPS, 1),
		P50: l.P50, P99: l.P99, Errors: l.Errors}
	why := ""
	if err != nil {
		s.Failure = err.Error()
		why = "load failed: " + err.Error()
	} else {
		s.Held, why = report.Holds(rate, l.QPS, l.P99, l.Errors)
	}
	if len(e.proxies) > 0 && u.Elapsed > 0 {
		s.ProxyVCPU = report.Round(u.CPU.Seconds()/u.Elapsed.Seconds(), 3)
	}
	verdict := "held"
	if !s.Held {
		verdict = "not held (" + why + ")"
	}
	fmt.Fprintf(r.out, "bench: %s capacity, %d conn: offered %.0f req/s, achieved %.0f, p50 %.0f p99 %.0f µs, %d errors, proxies %.2f vCPU: %s\n",
		name, c.Connections, rate, l.QPS, l.P50, l.P99, l.Errors, s.ProxyVCPU, verdict)
	return s, nil
}

// idleSweeps runs the idle-tunnel sweep of each of Config.Idle's scenarios the run measured,
// after everything else: the tunnels' memory stays in the ztunnels' Go heaps after they
// close, and would count in the resident sets measured after them. For the same reason both
// ztunnels are replaced (a new process takes the pods over, as in a rolling update) before
// every sweep but the first. A sweep that fails is reported and the run goes on: the figures
// measured before it stand.
func (r *runner) idleSweeps(ctx context.Context) {
	swept := false
	for _, name := range r.cfg.Idle.Scenarios {
		if _, skipped := r.skipped[name]; skipped || len(r.cfg.Idle.Levels) == 0 || !contains(r.cfg.Scenarios, name) {
			continue
		}
		err := r.idleSweep(ctx, name, swept)
		swept = true
		if err != nil {
			fmt.Fprintf(r.out, "bench: %s idle tunnels: %v\n", name, err)
			r.notes = append(r.notes, fmt.Sprintf("Idle tunnels of %s: not measured (%v).", name, err))
		}
	}
}

// BaselineWait is the least time after enrolling the namespace at which an idle sweep
// reads the ztunnels' resident sets it measures the tunnels' growth from: past the
// give-back after the capture (mesh/memreturn: at the first quiet second, SettleWait
// intervals at the latest) by a second. Read before it, the baseline holds the capture's
// code, and the first levels' growth comes out megabytes below zero.
const BaselineWait = (memreturn.SettleWait + 1) * memreturn.Interval

// baselineWait is when, after enrolling the namespace, the sweep reads its baseline.
func (s IdleSweep) baselineWait() time.Duration { return max(s.Settle, BaselineWait) }

func (r *runner) idleSweep(ctx context.Context, name string, restart bool) error {
	if restart {
		if err := r.restartZtunnels(ctx); err != nil {
			return err
		}
	}
	fmt.Fprintf(r.out, "bench: idle tunnels: %s\n", name)
	e, err := r.setup(ctx, name)
	if err != nil {
		return err
	}
	rows, err := r.idle(ctx, name)
	r.sweeps.Idle = append(r.sweeps.Idle, rows...)
	if terr := e.teardown(ctx); terr != nil {
		err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
	}
	return err
}

// restartZtunnels replaces both nodes' ztunnels, side by side, and records their new pids.
func (r *runner) restartZtunnels(ctx context.Context) error {
	next := make([]*lab.NodeState, len(r.state.Nodes))
	errs := make([]error, len(r.state.Nodes))
	var wg sync.WaitGroup
	for i, n := range r.state.Nodes {
		wg.Go(func() { next[i], errs[i] = lab.RestartZtunnel(ctx, r.opts, n.Name, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restart the ztunnels: %w", err)
	}
	for i, n := range next {
		r.state.Nodes[i] = *n
	}
	return nil
}

// ztunnelPID returns the pid of node's ztunnel.
func (r *runner) ztunnelPID(node string) (int, error) {
	for _, n := range r.state.Nodes {
		if n.Name == node {
			return n.Ztunnel.PID, nil
		}
	}
	return 0, fmt.Errorf("no node %q in the lab's state", node)
}

// idle runs the idle-tunnel sweep of one scenario: a `bench load --mode hold` in the client
// pod opens the tunnels of each level, each proven by a byte the server echoes, and holds
// them while both ztunnels' resident sets are read; then it closes them all, and the sweep
// waits (bounded) until the ztunnels have let their files go.
func (r *runner) idle(ctx context.Context, name string) (rows []report.IdleRow, err error) {
	c := r.cfg.Idle
	client, err := r.ztunnelPID(r.client.Node)
	if err != nil {
		return nil, err
	}
	server, err := r.ztunnelPID(r.server.Node)
	if err != nil {
		return nil, err
	}
	top := c.Levels[len(c.Levels)-1]
	// the holder's own bound: time to open every tunnel at a slow 100 a second, and more
	deadline := time.Minute + time.Duration(top)*10*time.Millisecond + time.Duration(len(c.Levels))*2*c.Settle
	hctx, cancel := context.WithTimeout(ctx, deadline+10*time.Second)
	defer cancel()
	target := net.JoinHostPort(r.server.IP, strconv.Itoa(echoPort))
	cmd := exec.CommandContext(hctx, "ip", "netns", "exec", filepath.Base(r.client.NetNS), r.cfg.Self, "load", "--mode", string(load.Hold),
		"--target", target, "--connections", strconv.Itoa(top), "--duration", deadline.String())
	ownSession(cmd)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	fds0 := map[int]int{client: fdCount(client), server: fdCount(server)}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	held := 0
	defer func() {
		// closing its input tells the holder to close every tunnel and exit
		stdin.Close()
		werr := cmd.Wait()
		if werr != nil && err == nil {
			err = fmt.Errorf("holder: %v\n%s", werr, stderr.String())
		}
		r.awaitClosed(ctx, name, held, fds0)
	}()
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	if err := sleep(c.baselineWait()); err != nil {
		return nil, err
	}
	base := map[int]int64{}
	for _, pid := range []int{client, server} {
		m, err := proc.ReadMemory(pid)
		if err != nil {
			return nil, err
		}
		base[pid] = m.RSS >> 10
	}
	sc := bufio.NewScanner(stdout)
	for _, n := range c.Levels {
		if _, err := fmt.Fprintf(stdin, "%d\n", n); err != nil {
			return rows, fmt.Errorf("holder: ask for %d: %w\n%s", n, err, stderr.String())
		}
		if !sc.Scan() {
			return rows, fmt.Errorf("holder: no report for %d tunnels: %v\n%s", n, sc.Err(), stderr.String())
		}
		var lv load.Level
		if err := json.Unmarshal(sc.Bytes(), &lv); err != nil {
			return rows, fmt.Errorf("holder: report %q: %w", sc.Text(), err)
		}
		held = lv.Held
		if err := sleep(c.Settle); err != nil {
			return rows, err
		}
		now := map[int]int64{}
		for _, pid := range []int{client, server} {
			m, err := proc.ReadMemory(pid)
			if err != nil {
				return rows, err
			}
			now[pid] = m.RSS >> 10
		}
		row := report.NewIdleRow(name, n, lv.Held, lv.Errors, lv.OpenSeconds, base[client], base[server], now[client], now[server])
		fmt.Fprintf(r.out, "bench: %s idle tunnels: %d held of %d (opened in %.2f s), ztunnel RSS client %.1f MB, server %.1f MB: %.1f + %.1f = %.1f kB per tunnel\n",
			name, lv.Held, n, lv.OpenSeconds, float64(now[client])/1024, float64(now[server])/1024,
			row.ClientKBPerTunnel, row.ServerKBPerTunnel, row.KBPerTunnel)
		rows = append(rows, row)
		if lv.Errors > 0 {
			fmt.Fprintf(r.out, "bench: %s idle tunnels: %d failed to open, the sweep ends here; first: %s\n", name, lv.Errors, lv.FirstError)
			break
		}
	}
	return rows, nil
}

// awaitClosed waits, at most 20 s, until both ztunnels hold no more files than before the
// sweep, but for the pooled HBONE connections that carried the tunnels (they stay until
// idle), so that the tunnels' teardown is not charged to what the run measures next.
func (r *runner) awaitClosed(ctx context.Context, name string, tunnels int, fds0 map[int]int) {
	// room for twice the pooled connections: HTTP/3's hold more than one file each
	pooled := 2 * (tunnels/hbone.DefaultClientMaxStreams + 1)
	err := waitFor(ctx, 20*time.Second, "the ztunnels to close the idle tunnels", func() error {
		var errs []error
		for pid, n := range fds0 {
			if now := fdCount(pid); now > n+pooled+20 {
				errs = append(errs, fmt.Errorf("ztunnel %d: %d files open, %d before", pid, now, n))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		fmt.Fprintf(r.out, "bench: %s idle tunnels: %v\n", name, err)
	}
}

// fdCount returns how many files pid has open (0 if it cannot tell).
func fdCount(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds)
}
