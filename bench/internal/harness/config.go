// Package harness runs `make bench`: it brings the bench lab up, measures every scenario
// back to back in one run (the same pods, the same load, the same machine minutes), writes
// bench/results/latest.json, the latency plot and the section of docs/benchmarks.md, and
// brings the lab down.
package harness

import (
	"fmt"
	"io"
	"slices"
	"time"

	"ambit.dev/bench/internal/report"
)

// Config is one benchmark run.
type Config struct {
	// Topology is the lab file (bench/lab.yaml); LabDir the lab's state dir.
	Topology string
	LabDir   string
	// LabPrefix and LabPortBase place the lab's host objects and ports (lab.Options).
	LabPrefix   string
	LabPortBase int
	// BinDir holds controller, ztunnel and ambitctl; Self is this program, which the
	// harness starts inside the pods as `bench load` and `bench serve`.
	BinDir string
	Self   string
	// ResultsDir receives latest.json and latency.png; Doc is docs/benchmarks.md (empty:
	// not written).
	ResultsDir string
	Doc        string
	// Command is what the doc shows as the command that made the figures.
	Command string

	// QPS is the fixed request rate of the latency runs, over each of Connections.
	QPS         float64
	Connections []int
	// Duration of each latency run, of the bulk transfer and of the churn run; Warmup
	// before each scenario's first run.
	Duration, BulkDuration, ChurnDuration, Warmup time.Duration
	// Rounds repeats every scenario, interleaved (direct, ambit-l4, …, direct, ambit-l4, …);
	// each published figure is the median over the rounds. Durations are per round.
	Rounds int
	// ChurnConnections is the concurrency of the churn run.
	ChurnConnections int
	// Scenarios to run, in order; empty: all.
	Scenarios []string
	// Profile runs perf on the ztunnels after the measured runs.
	Profile         bool
	ProfileDuration time.Duration
	// Capacity and Idle are the sweeps of how cost grows (issue 15); zero: not run. The
	// capacity sweep runs in the last round only, after a scenario's other measurements and
	// before its teardown; the idle sweeps after all rounds and the profile.
	Capacity CapacitySweep
	Idle     IdleSweep

	Out io.Writer
}

// CapacitySweep offers each of Rates in turn, rising, over Connections keep-alive
// connections for Step, and ends at the first rate the scenario does not hold (p99 over
// 5 ms, an error, or under 95% of the rate achieved: report.Holds) in Tries tries in a
// row: on a machine shared with other work, one burst of it can fail a step that the path
// holds, and a rate held on its second try is held.
type CapacitySweep struct {
	Rates       []float64
	Connections int
	Step        time.Duration
	Tries       int
}

// IdleSweep opens tunnels from the client pod through the mesh to the server pod's echo
// port in each of Scenarios and holds them idle, Levels of them in turn (cumulative,
// rising), reading both ztunnels' resident sets Settle after each level. Before each
// scenario's sweep but the first, both ztunnels are replaced by new processes.
type IdleSweep struct {
	Scenarios []string
	Levels    []int
	Settle    time.Duration
}

// WarmupFull is `make bench`'s warm-up: long enough for the proxies to be done with what
// enrolling the namespace set off. ztunnel gives memory back at the first quiet second
// after one-off work (mesh/memreturn, SettleWait), which a capture, its config push and
// the warm-up's first handshakes are; after a warm-up of 1 s that give-back could come
// just after the first row began, whose peak resident set was then the capture's, not
// the load's (docs/benchmarks.md). Every scenario gets the same.
const WarmupFull = 3 * time.Second

// Default is `make bench`. Its lab (prefix ambitbn, ports from 27000, subnet 10.79.0.0/16 in
// bench/lab.yaml) stays apart from a developer's lab (ambitlab, 15000) and the end-to-end
// tests' (ambite2e, 25000).
func Default() Config {
	return Config{
		Topology: "bench/lab.yaml", LabDir: "/run/ambit-bench-lab", LabPrefix: "ambitbn", LabPortBase: 27000, ResultsDir: "bench/results", Doc: "docs/benchmarks.md",
		Command: "make bench",
		QPS:     1000, Connections: []int{1, 16, 64},
		Rounds:   3,
		Duration: 8 * time.Second, BulkDuration: 4 * time.Second, ChurnDuration: 4 * time.Second, Warmup: WarmupFull,
		ChurnConnections: 8, Profile: true, ProfileDuration: 10 * time.Second,
		Capacity: CapacitySweep{Rates: []float64{500, 1000, 2000, 4000, 8000, 16000, 32000}, Connections: 16, Step: 3 * time.Second, Tries: 2},
		Idle:     IdleSweep{Scenarios: []string{report.AmbitL4, report.AmbitL4H3}, Levels: []int{1, 100, 1000, 10000}, Settle: time.Second},
	}
}

// Quick is `make bench-quick`: shorter runs and sweeps, fewer connection counts, no
// profile, and the doc left alone; under three minutes in all.
func Quick() Config {
	c := Default()
	c.Command = "make bench-quick"
	c.Connections = []int{1, 16}
	c.Rounds = 1
	c.Duration, c.BulkDuration, c.ChurnDuration, c.Warmup = 5*time.Second, 2*time.Second, 2*time.Second, time.Second
	c.Profile = false
	// two steps tried once each, short settles and one idle sweep (no ztunnel restart) keep
	// the whole under three minutes
	c.Capacity.Rates, c.Capacity.Step, c.Capacity.Tries = []float64{1000, 4000}, time.Second, 1
	c.Idle.Scenarios, c.Idle.Levels, c.Idle.Settle = []string{report.AmbitL4}, []int{1, 100}, 500*time.Millisecond
	c.ResultsDir = "bench/results/quick"
	c.Doc = ""
	return c
}

// Validate reports the first field that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Topology == "" || c.LabDir == "" || c.BinDir == "" || c.Self == "" || c.ResultsDir == "" || c.LabPrefix == "" || c.LabPortBase == 0:
		return fmt.Errorf("harness: topology, lab dir, lab prefix and port base, bin dir, self and results dir are required")
	case c.QPS <= 0:
		return fmt.Errorf("qps: %v is not positive", c.QPS)
	case len(c.Connections) == 0:
		return fmt.Errorf("connections: none")
	case c.Duration <= 0 || c.BulkDuration <= 0 || c.ChurnDuration <= 0:
		return fmt.Errorf("durations must be positive")
	case c.Rounds < 1:
		return fmt.Errorf("rounds: %d", c.Rounds)
	case c.ChurnConnections < 1:
		return fmt.Errorf("churn connections: %d", c.ChurnConnections)
	}
	for _, s := range append(slices.Clone(c.Scenarios), c.Idle.Scenarios...) {
		if !slices.Contains(AllScenarios, s) {
			return fmt.Errorf("scenario %q: not one of %v", s, AllScenarios)
		}
	}
	if k := c.Capacity; len(k.Rates) > 0 {
		switch {
		case !rising(k.Rates):
			return fmt.Errorf("capacity rates: %v do not rise from above 0", k.Rates)
		case k.Connections < 1:
			return fmt.Errorf("capacity connections: %d", k.Connections)
		case k.Step <= 0:
			return fmt.Errorf("capacity step: %s is not positive", k.Step)
		case k.Tries < 1:
			return fmt.Errorf("capacity tries: %d, want 1 or more", k.Tries)
		}
	}
	if i := c.Idle; len(i.Levels) > 0 && len(i.Scenarios) > 0 {
		levels := make([]float64, len(i.Levels))
		for j, n := range i.Levels {
			levels[j] = float64(n)
		}
		switch {
		case !rising(levels):
			return fmt.Errorf("idle levels: %v do not rise from above 0", i.Levels)
		case i.Levels[len(i.Levels)-1] > maxIdleTunnels:
			return fmt.Errorf("idle levels: %d tunnels; at most %d fit the machine's 20,000 open files a process", i.Levels[len(i.Levels)-1], maxIdleTunnels)
		case i.Settle < 0:
			return fmt.Errorf("idle settle: %s", i.Settle)
		}
	}
	return nil
}

// maxIdleTunnels is the most tunnels an idle sweep may hold: every tunnel is a file in the
// holder, in both ztunnels and in the server, and a process may open 20,000 here (the hard
// limit, which root cannot raise in this container).
const maxIdleTunnels = 18000

func rising(v []float64) bool {
	for i, x := range v {
		if x <= 0 || i > 0 && x <= v[i-1] {
			return false
		}
	}
	return true
}
