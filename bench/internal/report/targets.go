package report

import (
	"fmt"
	"strings"
)

// The targets the benchmark judges (issue 6), from the Rust ztunnel's published figures.
const (
	TargetAddedP99US  = 200.0 // ambit-l4 added p99 at 1,000 req/s
	TargetCPUPer1k    = 0.06  // vCPU per 1,000 req/s, per ztunnel
	TargetRSSMB       = 12.0  // per ztunnel
	TargetThroughputX = 0.40  // single-connection throughput as a share of direct
	// The waypoint's (issue 5), against Istio's Envoy waypoint at 0.25 vCPU and 60 MB.
	TargetWaypointCPUPer1k = 0.15
	TargetWaypointRSSMB    = 30.0
	// The waypoint's path (ambit-l7) may add at most this multiple of ztunnel's alone
	// (ambit-l4) to the p99, at each connection count (issue 15).
	TargetWaypointP99X = 1.5
)

// judgeWaypoint evaluates the waypoint's targets on the ambit-l7 rows.
func judgeWaypoint(rows []Row) []Verdict {
	l7 := filter(rows, AmbitL7)
	if len(l7) == 0 {
		return nil
	}
	var cpu, rss []string
	worstCPU, worstRSS := l7[0], l7[0]
	for _, r := range l7 {
		cpu = append(cpu, fmt.Sprintf("%s at %d conn", fmtF(r.WaypointCPUPer1k, 3), r.Connections))
		rss = append(rss, fmt.Sprintf("%s MB at %d conn", fmtF(r.WaypointRSSMB, 1), r.Connections))
		if r.WaypointCPUPer1k > worstCPU.WaypointCPUPer1k {
			worstCPU = r
		}
		if r.WaypointRSSMB > worstRSS.WaypointRSSMB {
			worstRSS = r
		}
	}
	c := Verdict{Target: "waypoint CPU per 1,000 req/s (1 KB)", Goal: "≤ 0.15 vCPU", Measured: strings.Join(cpu, ", "),
		Met: worstCPU.WaypointCPUPer1k <= TargetWaypointCPUPer1k}
	if !c.Met {
		c.Miss = fmt.Sprintf("+%s vCPU (%.1f×) at %d conn", fmtF(worstCPU.WaypointCPUPer1k-TargetWaypointCPUPer1k, 3),
			worstCPU.WaypointCPUPer1k/TargetWaypointCPUPer1k, worstCPU.Connections)
	}
	m := Verdict{Target: "waypoint peak RSS", Goal: "≤ 30 MB", Measured: strings.Join(rss, ", "),
		Met: worstRSS.WaypointRSSMB <= TargetWaypointRSSMB}
	if !m.Met {
		m.Miss = fmt.Sprintf("+%s MB (%.1f×)", fmtF(worstRSS.WaypointRSSMB-TargetWaypointRSSMB, 1), worstRSS.WaypointRSSMB/TargetWaypointRSSMB)
	}
	out := []Verdict{c, m}
	var lat, latMiss []string
	for _, r := range l7 {
		z, ok := Find(rows, AmbitL4, r.Connections)
		if !ok {
			continue
		}
		lat = append(lat, fmt.Sprintf("%s vs %s µs at %d conn", fmtF(r.AddedP99, 0), fmtF(z.AddedP99, 0), r.Connections))
		switch {
		case r.AddedP99 <= TargetWaypointP99X*max(z.AddedP99, 0):
		case z.AddedP99 <= 0: // no ratio to give: ambit-l4 added nothing measurable
			latMiss = append(latMiss, fmt.Sprintf("%s µs against none at %d conn", fmtF(r.AddedP99, 0), r.Connections))
		default:
			latMiss = append(latMiss, fmt.Sprintf("%.1f× at %d conn", r.AddedP99/z.AddedP99, r.Connections))
		}
	}
	if len(lat) > 0 {
		out = append(out, Verdict{Target: "waypoint added p99 vs ztunnel's (ambit-l7 vs ambit-l4)", Goal: "≤ 1.5× ambit-l4",
			Measured: strings.Join(lat, ", "), Met: len(latMiss) == 0, Miss: strings.Join(latMiss, ", ")})
	}
	return out
}

// Verdict is one target judged against one run.
type Verdict struct {
	Target   string
	Goal     string
	Measured string
	Met      bool
	// Miss says by how much a missed target is missed.
	Miss string
}

// Judge evaluates the targets on rows. A target whose scenarios are missing from the run
// is left out.
func Judge(rows []Row) []Verdict {
	out := judgeWaypoint(rows)
	l4 := filter(rows, AmbitL4)
	if len(l4) == 0 {
		return out
	}

	// added p99: every connection count must meet it
	var parts []string
	worst := l4[0]
	for _, r := range l4 {
		parts = append(parts, fmt.Sprintf("%s µs at %d conn", fmtF(r.AddedP99, 0), r.Connections))
		if r.AddedP99 > worst.AddedP99 {
			worst = r
		}
	}
	v := Verdict{Target: "ambit-l4 added p99 at 1,000 req/s", Goal: "≤ 200 µs", Measured: strings.Join(parts, ", "),
		Met: worst.AddedP99 <= TargetAddedP99US}
	if !v.Met {
		v.Miss = fmt.Sprintf("+%s µs (%.1f×) at %d conn", fmtF(worst.AddedP99-TargetAddedP99US, 0), worst.AddedP99/TargetAddedP99US, worst.Connections)
	}
	out = append(out, v)

	// CPU: the rows hold both ztunnels together; the target is per ztunnel
	parts = nil
	worst = l4[0]
	for _, r := range l4 {
		parts = append(parts, fmt.Sprintf("%s at %d conn", fmtF(r.CPUPer1k/2, 3), r.Connections))
		if r.CPUPer1k > worst.CPUPer1k {
			worst = r
		}
	}
	per := worst.CPUPer1k / 2
	v = Verdict{Target: "ztunnel CPU per 1,000 req/s (each of the two: the pair's figure / 2)", Goal: "≤ 0.06 vCPU",
		Measured: strings.Join(parts, ", "), Met: per <= TargetCPUPer1k}
	if !v.Met {
		v.Miss = fmt.Sprintf("+%s vCPU (%.1f×) at %d conn", fmtF(per-TargetCPUPer1k, 3), per/TargetCPUPer1k, worst.Connections)
	}
	out = append(out, v)

	var rss float64
	for _, r := range l4 {
		rss = max(rss, r.RSSMB)
	}
	v = Verdict{Target: "ztunnel peak RSS (larger of the two)", Goal: "≤ 12 MB", Measured: fmtF(rss, 1) + " MB", Met: rss <= TargetRSSMB}
	if !v.Met {
		v.Miss = fmt.Sprintf("+%s MB (%.1f×)", fmtF(rss-TargetRSSMB, 1), rss/TargetRSSMB)
	}
	out = append(out, v)

	if d := filter(rows, Direct); len(d) > 0 && d[0].ThroughputGbps > 0 {
		ratio := l4[0].ThroughputGbps / d[0].ThroughputGbps
		v = Verdict{Target: "ambit-l4 single-connection throughput vs direct", Goal: "≥ 40%",
			Measured: fmt.Sprintf("%.0f%% (%s of %s Gbps)", ratio*100, fmtF(l4[0].ThroughputGbps, 2), fmtF(d[0].ThroughputGbps, 2)),
			Met:      ratio >= TargetThroughputX}
		if !v.Met {
			v.Miss = fmt.Sprintf("%.0f points short", (TargetThroughputX-ratio)*100)
		}
		out = append(out, v)
	}

	for _, peer := range Peers {
		out = append(out, versusPeer(rows, l4, peer)...)
	}
	return out
}

func filter(rows []Row, scenario string) []Row {
	var out []Row
	for _, r := range rows {
		if r.Scenario == scenario {
			out = append(out, r)
		}
	}
	return out
}

// versusPeer judges ambit-l4 against one peer at each connection count both measured:
// added p99 and the pair's CPU per 1,000 req/s, each at most the peer's.
func versusPeer(rows, l4 []Row, peer string) []Verdict {
	var lat, cpu, latMiss, cpuMiss []string
	for _, r := range l4 {
		h, ok := Find(rows, peer, r.Connections)
		if !ok {
			continue
		}
		lat = append(lat, fmt.Sprintf("%s vs %s µs at %d conn", fmtF(r.AddedP99, 0), fmtF(h.AddedP99, 0), r.Connections))
		cpu = append(cpu, fmt.Sprintf("%s vs %s at %d conn", fmtF(r.CPUPer1k, 3), fmtF(h.CPUPer1k, 3), r.Connections))
		if r.AddedP99 > h.AddedP99 {
			latMiss = append(latMiss, fmt.Sprintf("+%s µs at %d conn", fmtF(r.AddedP99-h.AddedP99, 0), r.Connections))
		}
		if r.CPUPer1k > h.CPUPer1k {
			cpuMiss = append(cpuMiss, fmt.Sprintf("%.1f× at %d conn", r.CPUPer1k/max(h.CPUPer1k, 1e-9), r.Connections))
		}
	}
	if len(lat) == 0 {
		return nil
	}
	out := []Verdict{
		{Target: "ambit-l4 added p99 vs " + peer, Goal: "≤ " + peer,
			Measured: strings.Join(lat, ", "), Met: len(latMiss) == 0, Miss: strings.Join(latMiss, ", ")},
		{Target: "ambit-l4 proxy CPU per 1,000 req/s vs " + peer + " (pair vs pair)", Goal: "≤ " + peer,
			Measured: strings.Join(cpu, ", "), Met: len(cpuMiss) == 0, Miss: strings.Join(cpuMiss, ", ")},
	}
	// throughput and new connections per second are measured once per scenario
	p := filter(rows, peer)[0]
	for _, m := range []struct {
		what, unit string
		digits     int
		l4, peer   float64
	}{
		{"single-connection throughput", "Gbps", 2, l4[0].ThroughputGbps, p.ThroughputGbps},
		{"new connections per second", "/s", 0, l4[0].ConnPerSec, p.ConnPerSec},
	} {
		if m.l4 <= 0 || m.peer <= 0 {
			continue
		}
		v := Verdict{Target: "ambit-l4 " + m.what + " vs " + peer, Goal: "≥ " + peer,
			Measured: fmt.Sprintf("%s vs %s %s", fmtF(m.l4, m.digits), fmtF(m.peer, m.digits), m.unit), Met: m.l4 >= m.peer}
		if !v.Met {
			v.Miss = fmt.Sprintf("%.0f%% of %s", m.l4/m.peer*100, peer)
		}
		out = append(out, v)
	}
	return out
}
