package report

import (
	"bytes"
	"encoding/json"
	"image/png"
	"slices"
	"strings"
	"testing"
)

func sample() []Row {
	rows := []Row{
		{Scenario: Direct, Connections: 1, QPS: 1000, P50: 80, P90: 120, P99: 200, P999: 900, ThroughputGbps: 20, ConnPerSec: 10000},
		{Scenario: Direct, Connections: 16, QPS: 998, P50: 90, P90: 130, P99: 240, P999: 1000, ThroughputGbps: 20, ConnPerSec: 10000},
		{Scenario: AmbitL4, Connections: 1, QPS: 1000, P50: 200, P90: 300, P99: 350, P999: 1200, CPUPer1k: 0.1, RSSMB: 11, ThroughputGbps: 10, ConnPerSec: 3000},
		{Scenario: AmbitL4, Connections: 16, QPS: 998, P50: 250, P90: 400, P99: 600, P999: 1500, CPUPer1k: 0.14, RSSMB: 11.5, ThroughputGbps: 10, ConnPerSec: 3000},
		{Scenario: HAProxyMTLS, Connections: 1, QPS: 1000, P50: 220, P90: 300, P99: 500, P999: 1300, CPUPer1k: 0.12, RSSMB: 20, ThroughputGbps: 6, ConnPerSec: 1100},
		{Scenario: HAProxyMTLS, Connections: 16, QPS: 998, P50: 230, P90: 310, P99: 480, P999: 1300, CPUPer1k: 0.13, RSSMB: 20, ThroughputGbps: 6, ConnPerSec: 1100},
	}
	return Combine([][]Row{rows})
}

// TestAddedP99OneRound: one round's rows, each against direct's at its connection count.
func TestAddedP99OneRound(t *testing.T) {
	rows := sample()
	var got []float64
	for _, r := range rows {
		got = append(got, r.AddedP99)
	}
	if want := []float64{0, 0, 150, 360, 300, 240}; !slices.Equal(got, want) {
		t.Fatalf("added p99 %v, want %v", got, want)
	}
	orphan := Combine([][]Row{{{Scenario: AmbitL4, Connections: 64, P99: 500}}})
	if orphan[0].AddedP99 != 0 {
		t.Fatalf("row without a direct row: %v", orphan[0].AddedP99)
	}
}

// TestJSONShape pins the field names of latest.json: the issue names them exactly.
func TestJSONShape(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, sample()[:1]); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range got[0] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"added_p99_us", "connections", "conn_per_s", "cpu_vcpu_per_1k", "errors", "p50_us", "p90_us", "p999_us",
		"p99_us", "qps", "rss_mb", "scenario", "throughput_gbps"}
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Fatalf("fields %v\nwant   %v", keys, want)
	}
	b.Reset()
	if err := WriteJSON(&b, nil); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Fatalf("no rows: %q, %v", b.String(), err)
	}
}

func TestTable(t *testing.T) {
	tab := Table(sample())
	lines := strings.Split(strings.TrimSpace(tab), "\n")
	if len(lines) != 2+6 {
		t.Fatalf("%d lines:\n%s", len(lines), tab)
	}
	hasLines(t, tab,
		"| direct | 1 | 1000 | 80 | 120 | 200 | 900 | 0 | 0 | – | – | 20.00 | 10000 |",
		"| ambit-l4 | 16 | 998 | 250 | 400 | 600 | 1500 | 360 | 0 | 0.140 | 11.5 | 10.00 | 3000 |",
	)
	for _, l := range lines {
		if n := strings.Count(l, "|"); n != 14 {
			t.Errorf("%d cells in %q", n-1, l)
		}
	}
}

func TestScenarioTable(t *testing.T) {
	tab := ScenarioTable(sample(), sampleSteps())
	hasLines(t, tab, "| direct | 20.00 | 100% | 10000 | 100% | 4000 | 100% |", "| ambit-l4 | 10.00 | 50% | 3000 | 30% | 1000 | 25% |",
		"| haproxy-mtls | 6.00 | 30% | 1100 | 11% | < 1000 | – |")
}

func TestJudge(t *testing.T) {
	rows := append(sample(),
		Row{Scenario: NginxMTLS, Connections: 1, QPS: 1000, P50: 150, P90: 200, P99: 300, P999: 900, CPUPer1k: 0.05, RSSMB: 8, ThroughputGbps: 8, ConnPerSec: 4000},
		Row{Scenario: NginxMTLS, Connections: 16, QPS: 1000, P50: 150, P90: 200, P99: 700, P999: 900, CPUPer1k: 0.2, RSSMB: 8, ThroughputGbps: 8, ConnPerSec: 4000})
	rows = Combine([][]Row{rows})
	vs := Judge(rows)
	byName := map[string]Verdict{}
	for _, v := range vs {
		byName[v.Target] = v
	}
	check := func(prefix string, met bool, miss string) {
		t.Helper()
		for name, v := range byName {
			if strings.HasPrefix(name, prefix) {
				if v.Met != met || !strings.Contains(v.Miss, miss) {
					t.Errorf("%s: met %v miss %q; want %v, %q", name, v.Met, v.Miss, met, miss)
				}
				return
			}
		}
		t.Errorf("no verdict %q in %v", prefix, vs)
	}
	check("ambit-l4 added p99 at", false, "+160 µs (1.8×) at 16 conn")
	check("ztunnel CPU", false, "+0.010 vCPU")                         // 0.14 / 2 = 0.07
	check("ztunnel peak RSS", true, "")                                // 11.5 MB
	check("ambit-l4 single-connection throughput vs direct", true, "") // 50%
	check("ambit-l4 added p99 vs haproxy-mtls", false, "+120 µs at 16 conn")
	check("ambit-l4 proxy CPU per 1,000 req/s vs haproxy-mtls", false, "1.1× at 16 conn")
	check("ambit-l4 single-connection throughput vs haproxy-mtls", true, "")
	check("ambit-l4 new connections per second vs haproxy-mtls", true, "")
	// every peer is judged: nginx-mtls beats ambit-l4 on p99 at 1 conn, CPU at 1 conn and new connections
	check("ambit-l4 added p99 vs nginx-mtls", false, "+50 µs at 1 conn")
	check("ambit-l4 proxy CPU per 1,000 req/s vs nginx-mtls", false, "2.0× at 1 conn")
	check("ambit-l4 single-connection throughput vs nginx-mtls", true, "")
	check("ambit-l4 new connections per second vs nginx-mtls", false, "75% of nginx-mtls")
	if _, ok := byName["ambit-l4 added p99 vs stunnel-mtls"]; ok {
		t.Error("a verdict against stunnel-mtls, which the run did not measure")
	}
	if Judge(sample()[:2]) != nil {
		t.Error("verdicts without ambit-l4 rows")
	}
}

func TestSplice(t *testing.T) {
	section := Section(sample(), Sweeps{Capacity: sampleSteps(), Idle: sampleIdle()}, Meta{Date: "2026-11-23", Machine: "m", Command: "make bench", Settings: "s", Notes: []string{"note"}})
	if !strings.HasPrefix(section, BeginMarker+"\n") || !strings.HasSuffix(section, EndMarker+"\n") {
		t.Fatalf("section not within markers:\n%s", section)
	}
	head := "# Benchmarks\n\n## Controller\n\nother engineer's text\n"
	doc, err := Splice(head, section)
	if err != nil || doc != head+"\n"+section {
		t.Fatalf("append: %v\n%s", err, doc)
	}
	// again, with text after the section: replaced in place, the rest kept
	doc2, err := Splice(doc+"\ntrailer\n", strings.Replace(section, "note", "new note", 1))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc2, head) || !strings.HasSuffix(doc2, EndMarker+"\n\ntrailer\n") ||
		!strings.Contains(doc2, "new note") || strings.Count(doc2, BeginMarker) != 1 {
		t.Fatalf("replace:\n%s", doc2)
	}
	if _, err := Splice(EndMarker+"\n"+BeginMarker, section); err == nil {
		t.Fatal("markers out of order accepted")
	}
}

func TestPlot(t *testing.T) {
	var b bytes.Buffer
	if err := Plot(&b, sample(), "test"); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if w := img.Bounds().Dx(); w < 6*84 {
		t.Fatalf("width %d for 6 rows", w)
	}
	if err := Plot(&b, nil, "x"); err == nil {
		t.Fatal("empty plot accepted")
	}
}

func TestCombine(t *testing.T) {
	a := []Row{{Scenario: Direct, Connections: 1, QPS: 1000, P50: 80, P90: 100, P99: 200, P999: 300, ThroughputGbps: 20, ConnPerSec: 9000},
		{Scenario: AmbitL4, Connections: 1, QPS: 1000, P50: 200, P90: 250, P99: 400, P999: 900, Errors: 1, CPUPer1k: 0.2, RSSMB: 20, ThroughputGbps: 3, ConnPerSec: 2000}}
	b := []Row{{Scenario: Direct, Connections: 1, QPS: 990, P50: 90, P90: 300, P99: 90000, P999: 99000, ThroughputGbps: 10, ConnPerSec: 8000},
		{Scenario: AmbitL4, Connections: 1, QPS: 1000, P50: 210, P90: 260, P99: 420, P999: 1000, CPUPer1k: 0.3, RSSMB: 22, ThroughputGbps: 3.2, ConnPerSec: 2100}}
	c := []Row{{Scenario: Direct, Connections: 1, QPS: 1000, P50: 85, P90: 110, P99: 210, P999: 320, ThroughputGbps: 22, ConnPerSec: 9100},
		{Scenario: AmbitL4, Connections: 1, QPS: 998, P50: 205, P90: 255, P99: 410, P999: 950, Errors: 2, CPUPer1k: 0.25, RSSMB: 21, ThroughputGbps: 3.1, ConnPerSec: 2050}}
	got := Combine([][]Row{a, b, c})
	want := []Row{
		{Scenario: Direct, Connections: 1, QPS: 1000, P50: 85, P90: 110, P99: 210, P999: 320, ThroughputGbps: 20, ConnPerSec: 9000},
		{Scenario: AmbitL4, Connections: 1, QPS: 1000, P50: 205, P90: 255, P99: 410, P999: 950, AddedP99: 210, Errors: 3, CPUPer1k: 0.25, RSSMB: 22, ThroughputGbps: 3.1, ConnPerSec: 2050},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if m := median([]float64{1, 4, 2, 3}); m != 2.5 {
		t.Fatalf("even median %v", m)
	}
}

// TestJudgeWaypoint: the waypoint's three targets on the ambit-l7 rows, the p99 one against
// ambit-l4 at each connection count both measured.
func TestJudgeWaypoint(t *testing.T) {
	rows := append(sample(),
		Row{Scenario: AmbitL7, Connections: 1, QPS: 1000, P50: 300, P90: 400, P99: 400, P999: 1500, WaypointCPUPer1k: 0.14, WaypointRSSMB: 25},
		Row{Scenario: AmbitL7, Connections: 16, QPS: 998, P50: 300, P90: 500, P99: 1000, P999: 2000, WaypointCPUPer1k: 0.18, WaypointRSSMB: 31.5},
		Row{Scenario: AmbitL7, Connections: 64, QPS: 992, P50: 300, P90: 500, P99: 900, P999: 2000, WaypointCPUPer1k: 0.12, WaypointRSSMB: 20})
	rows = Combine([][]Row{rows})
	vs := judgeWaypoint(rows)
	if len(vs) != 3 {
		t.Fatalf("%d verdicts, want 3: %v", len(vs), vs)
	}
	want := []struct {
		target string
		met    bool
		miss   string
	}{
		{"waypoint CPU per 1,000 req/s (1 KB)", false, "+0.030 vCPU (1.2×) at 16 conn"},
		{"waypoint peak RSS", false, "+1.5 MB (1.1×)"},
		// added p99: 200 vs 150 µs at 1 conn (1.3×, met), 760 vs 360 at 16 (2.1×); 64 has no ambit-l4 row
		{"waypoint added p99 vs ztunnel's (ambit-l7 vs ambit-l4)", false, "2.1× at 16 conn"},
	}
	for i, w := range want {
		v := vs[i]
		if v.Target != w.target || v.Met != w.met || v.Miss != w.miss {
			t.Errorf("verdict %d: %q met %v miss %q; want %q met %v miss %q", i, v.Target, v.Met, v.Miss, w.target, w.met, w.miss)
		}
	}
	if !strings.Contains(vs[2].Measured, "200 vs 150 µs at 1 conn") || strings.Contains(vs[2].Measured, "64 conn") {
		t.Errorf("added p99 measured %q", vs[2].Measured)
	}
	if judgeWaypoint(sample()) != nil {
		t.Error("waypoint verdicts without ambit-l7 rows")
	}
}

// TestJudgeWaypointAgainstNoAddedP99: where ambit-l4 added nothing measurable (its p99 at
// or under direct's), the waypoint's added p99 is a miss with no ratio to give.
func TestJudgeWaypointAgainstNoAddedP99(t *testing.T) {
	rows := []Row{
		{Scenario: Direct, Connections: 16, QPS: 998, P99: 900},
		{Scenario: AmbitL4, Connections: 16, QPS: 998, P99: 800, CPUPer1k: 0.2},
		{Scenario: AmbitL7, Connections: 16, QPS: 998, P99: 1300, WaypointCPUPer1k: 0.14, WaypointRSSMB: 25},
	}
	rows = Combine([][]Row{rows})
	vs := judgeWaypoint(rows)
	if len(vs) != 3 || vs[2].Met || vs[2].Miss != "400 µs against none at 16 conn" {
		t.Fatalf("verdicts %+v; want the added p99 missed with \"400 µs against none at 16 conn\"", vs)
	}
}

// TestCombineAddedP99AgainstDirectsLowest: the added p99 is measured against the lowest of
// direct's rounds, so bursts in two of direct's three rounds cannot turn it negative.
func TestCombineAddedP99AgainstDirectsLowest(t *testing.T) {
	round := func(direct, l4 float64) []Row {
		return []Row{{Scenario: Direct, Connections: 16, P99: direct}, {Scenario: AmbitL4, Connections: 16, P99: l4}}
	}
	// Medians: direct 1000, ambit-l4 800, a difference of -200; direct's lowest round 300.
	got := Combine([][]Row{round(300, 800), round(1000, 1300), round(2200, 700)})
	if got[0].P99 != 1000 || got[1].P99 != 800 || got[1].AddedP99 != 500 {
		t.Fatalf("direct p99 %v, ambit-l4 p99 %v added %v; want 1000, 800 and 500 (against direct's lowest round)", got[0].P99, got[1].P99, got[1].AddedP99)
	}
	if got[0].AddedP99 != 0 {
		t.Fatalf("direct's added p99 %v", got[0].AddedP99)
	}
}
