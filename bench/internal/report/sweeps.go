package report

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The capacity sweep's limits (issue 15): a rate is held when its p99 stays under
// CapacityP99US, nothing fails and at least CapacityMinShare of it is achieved.
const (
	CapacityP99US    = 5000.0
	CapacityMinShare = 0.95
)

// Sweeps are the figures of how cost grows, measured once per run beside the rows and
// written to bench/results/sweeps.json (latest.json keeps its list of rows).
type Sweeps struct {
	// Capacity holds every step of every scenario's capacity sweep, in the order run.
	Capacity []Step `json:"capacity"`
	// Idle holds every level of the idle-tunnel sweep.
	Idle []IdleRow `json:"idle"`
}

// Step is one rate of a capacity sweep: a fixed offered rate over a fixed number of
// keep-alive connections for a short while. Latencies are in microseconds.
type Step struct {
	Scenario    string  `json:"scenario"`
	Connections int     `json:"connections"`
	OfferedQPS  float64 `json:"offered_qps"`
	QPS         float64 `json:"qps"`
	P50         float64 `json:"p50_us"`
	P99         float64 `json:"p99_us"`
	Errors      int64   `json:"errors"`
	// ProxyVCPU is the proxies' CPU over the step (all of the path's proxies together), in
	// vCPU.
	ProxyVCPU float64 `json:"proxy_vcpu,omitempty"`
	// Failure says why the load of the step failed outright, if it did; it did not hold.
	Failure string `json:"failure,omitempty"`
	// Held says whether the step kept within the limits; the sweep ends at the first rate
	// that did not, on its last try.
	Held bool `json:"held"`
	// Retry says the step offers again the rate of the step before it, which was not held:
	// a rate counts as not held only when it fails every try (harness.CapacitySweep.Tries),
	// so that one burst of other work on a shared machine does not end a sweep.
	Retry bool `json:"retry,omitempty"`
}

// Decisive drops every step that a retry of its rate follows: the tries that decide, one
// per rate.
func Decisive(steps []Step) []Step {
	out := make([]Step, 0, len(steps))
	for i, s := range steps {
		if i+1 < len(steps) && retries(steps[i+1], s) {
			continue
		}
		out = append(out, s)
	}
	return out
}

// retries reports whether step next is a retry of step s.
func retries(next, s Step) bool {
	return next.Retry && next.Scenario == s.Scenario && next.OfferedQPS == s.OfferedQPS
}

// Holds reports whether a step kept within the capacity limits, and if not, why.
func Holds(offered, achieved, p99 float64, errors int64) (bool, string) {
	var why []string
	if p99 > CapacityP99US {
		why = append(why, fmt.Sprintf("p99 %s ms", fmtF(p99/1000, 1)))
	}
	if errors > 0 {
		why = append(why, fmt.Sprintf("%d errors", errors))
	}
	if achieved < CapacityMinShare*offered {
		why = append(why, fmt.Sprintf("%.0f%% of the rate", achieved/offered*100))
	}
	return len(why) == 0, strings.Join(why, ", ")
}

// Capacity returns the highest offered rate scenario held in steps, whether it held every
// rate offered (so that its capacity is at least that, not exactly that), and whether it
// was swept at all.
func Capacity(steps []Step, scenario string) (qps float64, topped, swept bool) {
	topped = true
	for _, s := range Decisive(steps) {
		if s.Scenario != scenario {
			continue
		}
		swept = true
		if s.Held {
			qps = max(qps, s.OfferedQPS)
		} else {
			topped = false
		}
	}
	return qps, topped && swept, swept
}

// FillCapacity sets CapacityQPS of every row from the sweep of its scenario.
func FillCapacity(rows []Row, steps []Step) {
	for i := range rows {
		rows[i].CapacityQPS, _, _ = Capacity(steps, rows[i].Scenario)
	}
}

// capacityCell is a scenario's capacity as the tables print it: "–" when not swept, "< r"
// when the first rate r already failed, "≥ r" when the last one held.
func capacityCell(steps []Step, scenario string) string {
	qps, topped, swept := Capacity(steps, scenario)
	switch {
	case !swept:
		return "–"
	case topped:
		return "≥ " + fmtF(qps, 0)
	case qps == 0:
		first := steps[slices.IndexFunc(steps, func(s Step) bool { return s.Scenario == scenario })]
		return "< " + fmtF(first.OfferedQPS, 0)
	}
	return fmtF(qps, 0)
}

// stepWhy says why a step was not held.
func stepWhy(s Step) string {
	if s.Failure != "" {
		return "load failed"
	}
	_, why := Holds(s.OfferedQPS, s.QPS, s.P99, s.Errors)
	return why
}

// CapacityTable renders the capacity sweeps as the curve they are: one row per scenario,
// the p99 at each offered rate, the step that ended the sweep in bold with its reason.
func CapacityTable(steps []Step) string {
	var rates []float64
	var scenarios []string
	for _, s := range steps {
		if !slices.Contains(rates, s.OfferedQPS) {
			rates = append(rates, s.OfferedQPS)
		}
		if !slices.Contains(scenarios, s.Scenario) {
			scenarios = append(scenarios, s.Scenario)
		}
	}
	if len(steps) == 0 {
		return ""
	}
	slices.Sort(rates)
	var b strings.Builder
	b.WriteString("| scenario | capacity req/s |")
	for _, r := range rates {
		fmt.Fprintf(&b, " p99 ms at %s |", fmtF(r, 0))
	}
	b.WriteString("\n|---|--:|" + strings.Repeat("--:|", len(rates)) + "\n")
	decisive := Decisive(steps)
	for _, name := range scenarios {
		fmt.Fprintf(&b, "| %s | %s |", name, capacityCell(steps, name))
		for _, r := range rates {
			at := func(s Step) bool { return s.Scenario == name && s.OfferedQPS == r }
			i := slices.IndexFunc(decisive, at)
			if i < 0 {
				b.WriteString(" |")
				continue
			}
			s := decisive[i]
			var notes []string
			if s.Held {
				fmt.Fprintf(&b, " %s", fmtF(s.P99/1000, 2))
			} else {
				fmt.Fprintf(&b, " **%s**", fmtF(s.P99/1000, 2))
				notes = append(notes, stepWhy(s))
			}
			// a first try that was not held, before the decisive one
			if first := steps[slices.IndexFunc(steps, at)]; first != s {
				notes = append(notes, fmt.Sprintf("first try %s, %s", fmtF(first.P99/1000, 2), stepWhy(first)))
			}
			if len(notes) > 0 {
				fmt.Fprintf(&b, " (%s)", strings.Join(notes, "; "))
			}
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// IdleRow is one level of the idle-tunnel sweep: Tunnels connections opened from the client
// pod through the mesh to the server pod, each proven end to end by a byte echoed, and held
// idle while both ztunnels' resident sets are read. RSS figures are in kB; the per-tunnel
// figures are the growth over the sweep's baseline (read before its first tunnel) divided
// by the tunnels held.
type IdleRow struct {
	Scenario string `json:"scenario"`
	Tunnels  int    `json:"tunnels"`
	// Held is how many were open end to end; Errors how many failed to open.
	Held   int `json:"held"`
	Errors int `json:"errors"`
	// OpenSeconds is how long the level's new tunnels took to open.
	OpenSeconds float64 `json:"open_s"`
	// Client is the ztunnel of the client's node, Server that of the server's.
	ClientBaseKB      int64   `json:"client_ztunnel_base_rss_kb"`
	ServerBaseKB      int64   `json:"server_ztunnel_base_rss_kb"`
	ClientRSSKB       int64   `json:"client_ztunnel_rss_kb"`
	ServerRSSKB       int64   `json:"server_ztunnel_rss_kb"`
	ClientKBPerTunnel float64 `json:"client_ztunnel_kb_per_tunnel"`
	ServerKBPerTunnel float64 `json:"server_ztunnel_kb_per_tunnel"`
	// KBPerTunnel is both ztunnels together.
	KBPerTunnel float64 `json:"kb_per_tunnel"`
}

// NewIdleRow computes the per-tunnel figures of a level.
func NewIdleRow(scenario string, tunnels, held, errors int, open float64, clientBase, serverBase, client, server int64) IdleRow {
	r := IdleRow{Scenario: scenario, Tunnels: tunnels, Held: held, Errors: errors, OpenSeconds: Round(open, 2),
		ClientBaseKB: clientBase, ServerBaseKB: serverBase, ClientRSSKB: client, ServerRSSKB: server}
	if held > 0 {
		r.ClientKBPerTunnel = Round(float64(client-clientBase)/float64(held), 2)
		r.ServerKBPerTunnel = Round(float64(server-serverBase)/float64(held), 2)
		r.KBPerTunnel = Round(float64(client-clientBase+server-serverBase)/float64(held), 2)
	}
	return r
}

// IdleTable renders the idle-tunnel sweep as a Markdown table.
func IdleTable(rows []IdleRow) string {
	if len(rows) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| scenario | tunnels | held | opened in s | client ztunnel RSS MB | server ztunnel RSS MB | client kB / tunnel | server kB / tunnel | both kB / tunnel |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rows {
		held := fmt.Sprint(r.Held)
		if r.Errors > 0 {
			held += fmt.Sprintf(" (**%d failed**)", r.Errors)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", r.Scenario, r.Tunnels, held, fmtF(r.OpenSeconds, 2),
			fmtF(float64(r.ClientRSSKB)/1024, 1), fmtF(float64(r.ServerRSSKB)/1024, 1),
			fmtF(r.ClientKBPerTunnel, 1), fmtF(r.ServerKBPerTunnel, 1), fmtF(r.KBPerTunnel, 1))
	}
	return b.String()
}

// WriteSweeps writes sw as indented JSON, with empty lists rather than nulls.
func WriteSweeps(w io.Writer, sw Sweeps) error {
	if sw.Capacity == nil {
		sw.Capacity = []Step{}
	}
	if sw.Idle == nil {
		sw.Idle = []IdleRow{}
	}
	b, err := json.MarshalIndent(sw, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
