package report

import (
	"fmt"
	"strings"
)

// Markers delimit the section `make bench` owns in docs/benchmarks.md.
const (
	BeginMarker = "<!-- make bench: begin -->"
	EndMarker   = "<!-- make bench: end -->"
)

// Meta is what the section says about the run besides its rows.
type Meta struct {
	Date    string
	Machine string
	Command string
	// Settings describes the run: durations, rate, connection counts.
	Settings string
	// Notes are extra paragraphs (method, profiles), Markdown, printed after the targets.
	Notes []string
}

// Table renders rows as a Markdown table.
func Table(rows []Row) string {
	var b strings.Builder
	b.WriteString("| scenario | conn | qps | p50 µs | p90 µs | p99 µs | p99.9 µs | added p99 µs | errors | proxy vCPU / 1k req/s | proxy RSS MB | 1-conn Gbps | new conn/s |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rows {
		cpu, rss := fmtF(r.CPUPer1k, 3), fmtF(r.RSSMB, 1)
		if r.Scenario == Direct {
			cpu, rss = "–", "–"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s |\n",
			r.Scenario, r.Connections, fmtF(r.QPS, 0), fmtF(r.P50, 0), fmtF(r.P90, 0), fmtF(r.P99, 0), fmtF(r.P999, 0),
			fmtF(r.AddedP99, 0), r.Errors, cpu, rss, fmtF(r.ThroughputGbps, 2), fmtF(r.ConnPerSec, 0))
	}
	return b.String()
}

// ScenarioTable renders the per-scenario figures, bulk throughput, connection churn and
// the capacity of steps, with their ratios to direct.
func ScenarioTable(rows []Row, steps []Step) string {
	var direct Row
	for _, r := range rows {
		if r.Scenario == Direct {
			direct = r
			break
		}
	}
	ratio := func(v, d float64) string {
		if d <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f%%", v/d*100)
	}
	var b strings.Builder
	directCap, directTopped, _ := Capacity(steps, Direct)
	b.WriteString("| scenario | 1-conn throughput Gbps | vs direct | new connections/s | vs direct | capacity req/s (p99 < 5 ms) | vs direct |\n|---|--:|--:|--:|--:|--:|--:|\n")
	for _, name := range Scenarios(rows) {
		r := filter(rows, name)[0]
		capRatio := "–"
		// a sweep that held its last rate gives a lower bound: the ratio to it an upper one
		if c, topped, swept := Capacity(steps, name); swept && !topped && c > 0 {
			capRatio = ratio(c, directCap)
			if directTopped && capRatio != "–" {
				capRatio = "≤ " + capRatio
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", name, fmtF(r.ThroughputGbps, 2), ratio(r.ThroughputGbps, direct.ThroughputGbps),
			fmtF(r.ConnPerSec, 0), ratio(r.ConnPerSec, direct.ConnPerSec), capacityCell(steps, name), capRatio)
	}
	return b.String()
}

// TargetsTable renders verdicts as a Markdown table.
func TargetsTable(vs []Verdict) string {
	var b strings.Builder
	b.WriteString("| target | goal | measured | verdict |\n|---|---|---|---|\n")
	for _, v := range vs {
		verdict := "met"
		if !v.Met {
			verdict = "**missed**: " + v.Miss
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", v.Target, v.Goal, v.Measured, verdict)
	}
	return b.String()
}

// Section renders the whole section between the markers, markers included: the rows, the
// sweeps of how cost grows and the targets judged.
func Section(rows []Row, sw Sweeps, m Meta) string {
	var b strings.Builder
	b.WriteString(BeginMarker + "\n")
	b.WriteString("## Data plane: `make bench`\n\n")
	b.WriteString("*This section is written by `make bench` (bench/cmd/bench); edit the harness, not the text.*\n\n")
	fmt.Fprintf(&b, "- date: %s\n- machine: %s\n- command: `%s`\n- run: %s\n\n", m.Date, m.Machine, m.Command, m.Settings)
	b.WriteString(Table(rows))
	b.WriteString("\nRows: bench/results/latest.json. Plot: bench/results/latency.png.\n\n")
	b.WriteString(ScenarioTable(rows, sw.Capacity))
	b.WriteString("\n")
	if len(sw.Capacity) > 0 || len(sw.Idle) > 0 {
		b.WriteString("### How cost grows\n\n")
	}
	if len(sw.Capacity) > 0 {
		b.WriteString("Capacity: the highest offered rate each scenario held with p99 under 5 ms, no errors and at least 95% of the rate achieved, rising until one was not held on its last try (in bold, with why); a rate not held is tried again, and a first try not held is noted beside the one that decided.\n\n")
		b.WriteString(CapacityTable(sw.Capacity))
		b.WriteString("\nPlot: bench/results/capacity.png.\n\n")
	}
	if len(sw.Idle) > 0 {
		b.WriteString("Idle tunnels: connections opened through the mesh and held idle; the ztunnels' resident set at each count, and its growth over the count before the first, per tunnel.\n\n")
		b.WriteString(IdleTable(sw.Idle))
		b.WriteString("\nPlot: bench/results/idle.png. Steps and levels: bench/results/sweeps.json.\n\n")
	}
	if vs := Judge(rows); len(vs) > 0 {
		b.WriteString("### Targets, judged on this run\n\n")
		b.WriteString(TargetsTable(vs))
		b.WriteString("\n")
	}
	for _, n := range m.Notes {
		b.WriteString(strings.TrimRight(n, "\n"))
		b.WriteString("\n\n")
	}
	b.WriteString(EndMarker + "\n")
	return b.String()
}

// Splice puts section into doc: in place of the text between the markers if doc has
// them, else at the end. Everything outside the markers is kept byte for byte.
func Splice(doc, section string) (string, error) {
	i := strings.Index(doc, BeginMarker)
	j := strings.Index(doc, EndMarker)
	switch {
	case i < 0 && j < 0:
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		if doc != "" {
			doc += "\n"
		}
		return doc + section, nil
	case i < 0 || j < i:
		return "", fmt.Errorf("benchmarks doc: markers %q and %q are not a pair in order", BeginMarker, EndMarker)
	}
	end := j + len(EndMarker)
	if end < len(doc) && doc[end] == '\n' {
		end++
	}
	return doc[:i] + section + doc[end:], nil
}
