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

	Out io.Writer
}

// Default is `make bench`. Its lab (prefix ambitbn, ports from 27000, subnet 10.79.0.0/16 in
// bench/lab.yaml) stays apart from a developer's lab (ambitlab, 15000) and the end-to-end
// tests' (ambite2e, 25000).
func Default() Config {
	return Config{
		Topology: "bench/lab.yaml", LabDir: "/run/ambit-bench-lab", LabPrefix: "ambitbn", LabPortBase: 27000, ResultsDir: "bench/results", Doc: "docs/benchmarks.md",
		Command: "make bench",
		QPS:     1000, Connections: []int{1, 16, 64},
		Rounds:   3,
		Duration: 8 * time.Second, BulkDuration: 4 * time.Second, ChurnDuration: 4 * time.Second, Warmup: time.Second,
		ChurnConnections: 8, Profile: true, ProfileDuration: 10 * time.Second,
	}
}

// Quick is `make bench-quick`: shorter runs, fewer connection counts, no profile, and
// the doc left alone.
func Quick() Config {
	c := Default()
	c.Command = "make bench-quick"
	c.Connections = []int{1, 16}
	c.Rounds = 1
	c.Duration, c.BulkDuration, c.ChurnDuration, c.Warmup = 5*time.Second, 3*time.Second, 3*time.Second, time.Second
	c.Profile = false
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
	for _, s := range c.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			return fmt.Errorf("scenario %q: not one of %v", s, AllScenarios)
		}
	}
	return nil
}
