package report

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
)

// sampleSteps: direct holds up to 4000 and fails at 8000 on p99; ambit-l4 holds 1000 and
// fails at 2000 on the rate achieved; haproxy-mtls fails its first rate on errors;
// istio-go-hbone holds every rate offered.
func sampleSteps() []Step {
	return []Step{
		{Scenario: Direct, Connections: 16, OfferedQPS: 1000, QPS: 1000, P50: 100, P99: 400, Held: true},
		{Scenario: Direct, Connections: 16, OfferedQPS: 2000, QPS: 1999, P50: 110, P99: 600, Held: true},
		{Scenario: Direct, Connections: 16, OfferedQPS: 4000, QPS: 3990, P50: 150, P99: 1900, Held: true},
		{Scenario: Direct, Connections: 16, OfferedQPS: 8000, QPS: 7900, P50: 900, P99: 8000},
		{Scenario: AmbitL4, Connections: 16, OfferedQPS: 1000, QPS: 998, P50: 300, P99: 3000, ProxyVCPU: 0.2, Held: true},
		{Scenario: AmbitL4, Connections: 16, OfferedQPS: 2000, QPS: 1700, P50: 800, P99: 4500, ProxyVCPU: 0.5},
		{Scenario: HAProxyMTLS, Connections: 16, OfferedQPS: 1000, QPS: 1000, P50: 300, P99: 2600, Errors: 3},
		{Scenario: IstioGoHBONE, Connections: 16, OfferedQPS: 1000, QPS: 1000, P50: 300, P99: 2000, Held: true},
		{Scenario: IstioGoHBONE, Connections: 16, OfferedQPS: 2000, QPS: 2000, P50: 300, P99: 2500, Held: true},
	}
}

// hasLines fails t for each of want that is not a whole line of the table tab.
func hasLines(t *testing.T, tab string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(tab, w+"\n") {
			t.Errorf("lacks %q:\n%s", w, tab)
		}
	}
}

func sampleIdle() []IdleRow {
	return []IdleRow{
		NewIdleRow(AmbitL4, 1, 1, 0, 0.01, 30000, 31000, 30010, 31000),
		NewIdleRow(AmbitL4, 100, 100, 0, 0.2, 30000, 31000, 30800, 31600),
		NewIdleRow(AmbitL4, 1000, 1000, 0, 1.5, 30000, 31000, 38000, 37000),
		NewIdleRow(AmbitL4H3, 1, 1, 0, 0.02, 33000, 34000, 33020, 34004),
		NewIdleRow(AmbitL4H3, 100, 60, 40, 5, 33000, 34000, 35400, 35200),
	}
}

func TestHolds(t *testing.T) {
	for _, c := range []struct {
		offered, achieved, p99 float64
		errors                 int64
		held                   bool
		why                    string
	}{
		{1000, 1000, 4999, 0, true, ""},
		{1000, 950, 5000, 0, true, ""}, // both limits inclusive
		{1000, 1000, 5001, 0, false, "p99 5.0 ms"},
		{1000, 1000, 100, 1, false, "1 errors"},
		{1000, 949, 100, 0, false, "95% of the rate"},
		{2000, 1000, 9000, 2, false, "p99 9.0 ms, 2 errors, 50% of the rate"},
	} {
		held, why := Holds(c.offered, c.achieved, c.p99, c.errors)
		if held != c.held || why != c.why {
			t.Errorf("Holds(%v, %v, %v, %d) = %v, %q; want %v, %q", c.offered, c.achieved, c.p99, c.errors, held, why, c.held, c.why)
		}
	}
}

func TestCapacity(t *testing.T) {
	steps := sampleSteps()
	for _, c := range []struct {
		scenario      string
		qps           float64
		topped, swept bool
		cell          string
	}{
		{Direct, 4000, false, true, "4000"},
		{AmbitL4, 1000, false, true, "1000"},
		{HAProxyMTLS, 0, false, true, "< 1000"},
		{IstioGoHBONE, 2000, true, true, "≥ 2000"},
		{NginxMTLS, 0, false, false, "–"},
	} {
		qps, topped, swept := Capacity(steps, c.scenario)
		if qps != c.qps || topped != c.topped || swept != c.swept {
			t.Errorf("%s: capacity %v topped %v swept %v; want %v %v %v", c.scenario, qps, topped, swept, c.qps, c.topped, c.swept)
		}
		if cell := capacityCell(steps, c.scenario); cell != c.cell {
			t.Errorf("%s: cell %q, want %q", c.scenario, cell, c.cell)
		}
	}
	rows := sample()
	FillCapacity(rows, steps)
	var got []float64
	for _, r := range rows {
		got = append(got, r.CapacityQPS)
	}
	if want := []float64{4000, 4000, 1000, 1000, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("capacity of the rows %v, want %v", got, want)
	}
	// the rounds keep the one round's capacity
	a, b := rows[2], rows[2]
	b.CapacityQPS = 0
	if c := Combine([][]Row{{b}, {a}, {b}}); c[0].CapacityQPS != 1000 {
		t.Fatalf("combined capacity %v", c[0].CapacityQPS)
	}
}

func TestScenarioTableCapacityBounds(t *testing.T) {
	// direct held every rate: its capacity is a lower bound, the others' ratios upper ones
	steps := []Step{
		{Scenario: Direct, OfferedQPS: 1000, QPS: 1000, P99: 100, Held: true},
		{Scenario: AmbitL4, OfferedQPS: 1000, QPS: 1000, P99: 100, Held: true},
		{Scenario: AmbitL4, OfferedQPS: 2000, QPS: 1000, P99: 100},
	}
	tab := ScenarioTable(sample()[:4], steps)
	hasLines(t, tab, "| direct | 20.00 | 100% | 10000 | 100% | ≥ 1000 | – |", "| ambit-l4 | 10.00 | 50% | 3000 | 30% | 1000 | ≤ 100% |")
	tab = ScenarioTable(sample(), nil)
	if !strings.Contains(tab, "| ambit-l4 | 10.00 | 50% | 3000 | 30% | – | – |\n") {
		t.Errorf("without a sweep:\n%s", tab)
	}
}

func TestCapacityTable(t *testing.T) {
	tab := CapacityTable(sampleSteps())
	lines := strings.Split(strings.TrimSpace(tab), "\n")
	if len(lines) != 2+4 {
		t.Fatalf("%d lines:\n%s", len(lines), tab)
	}
	for _, want := range []string{
		"| scenario | capacity req/s | p99 ms at 1000 | p99 ms at 2000 | p99 ms at 4000 | p99 ms at 8000 |",
		"| direct | 4000 | 0.40 | 0.60 | 1.90 | **8.00** (p99 8.0 ms) |",
		"| ambit-l4 | 1000 | 3.00 | **4.50** (85% of the rate) | | |",
		"| haproxy-mtls | < 1000 | **2.60** (3 errors) | | | |",
		"| istio-go-hbone | ≥ 2000 | 2.00 | 2.50 | | |",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("lacks %q:\n%s", want, tab)
		}
	}
	for _, l := range lines {
		if n := strings.Count(l, "|"); n != 7 {
			t.Errorf("%d cells in %q", n-1, l)
		}
	}
	if CapacityTable(nil) != "" {
		t.Error("a table without steps")
	}
	failed := CapacityTable([]Step{{Scenario: Direct, OfferedQPS: 1000, Failure: "exit status 1"}})
	if !strings.Contains(failed, "(load failed)") {
		t.Errorf("a failed load step:\n%s", failed)
	}
}

func TestCapacityRetries(t *testing.T) {
	// ambit-l4 fails 2000 once and holds it on the retry, then fails 4000 twice;
	// istio-go-hbone holds its only rate on the retry
	steps := []Step{
		{Scenario: AmbitL4, OfferedQPS: 1000, QPS: 1000, P99: 3000, Held: true},
		{Scenario: AmbitL4, OfferedQPS: 2000, QPS: 2000, P99: 9000},
		{Scenario: AmbitL4, OfferedQPS: 2000, QPS: 2000, P99: 2100, Held: true, Retry: true},
		{Scenario: AmbitL4, OfferedQPS: 4000, QPS: 4000, P99: 6300},
		{Scenario: AmbitL4, OfferedQPS: 4000, QPS: 3000, P99: 5800, Retry: true},
		{Scenario: IstioGoHBONE, OfferedQPS: 1000, QPS: 1000, P99: 100, Errors: 2},
		{Scenario: IstioGoHBONE, OfferedQPS: 1000, QPS: 1000, P99: 2000, Held: true, Retry: true},
	}
	if d := Decisive(steps); len(d) != 4 || d[1].P99 != 2100 || d[2].P99 != 5800 || d[3].P99 != 2000 {
		t.Fatalf("decisive steps %+v", d)
	}
	if qps, topped, _ := Capacity(steps, AmbitL4); qps != 2000 || topped {
		t.Errorf("ambit-l4: capacity %v topped %v, want 2000, false", qps, topped)
	}
	if qps, topped, _ := Capacity(steps, IstioGoHBONE); qps != 1000 || !topped {
		t.Errorf("istio-go-hbone: capacity %v topped %v, want 1000, true", qps, topped)
	}
	tab := CapacityTable(steps)
	hasLines(t, tab,
		"| ambit-l4 | 2000 | 3.00 | 2.10 (first try 9.00, p99 9.0 ms) | **5.80** (p99 5.8 ms, 75% of the rate; first try 6.30, p99 6.3 ms) |",
		"| istio-go-hbone | ≥ 1000 | 2.00 (first try 0.10, 2 errors) | | |",
	)
	var png bytes.Buffer
	if err := PlotCapacity(&png, steps, "retries"); err != nil {
		t.Fatal(err)
	}
}

func TestIdle(t *testing.T) {
	rows := sampleIdle()
	// 1000 tunnels: client 30000 → 38000 kB, server 31000 → 37000 kB
	if r := rows[2]; r.ClientKBPerTunnel != 8 || r.ServerKBPerTunnel != 6 || r.KBPerTunnel != 14 {
		t.Fatalf("per tunnel %+v", r)
	}
	// 60 held of 100: divided by those held
	if r := rows[4]; r.ClientKBPerTunnel != 40 || r.ServerKBPerTunnel != 20 || r.KBPerTunnel != 60 {
		t.Fatalf("per tunnel of a partial level %+v", r)
	}
	if r := NewIdleRow(AmbitL4, 10, 0, 10, 1, 1, 1, 5, 5); r.KBPerTunnel != 0 {
		t.Fatalf("nothing held: %+v", r)
	}
	tab := IdleTable(rows)
	hasLines(t, tab,
		"| ambit-l4 | 1000 | 1000 | 1.50 | 37.1 | 36.1 | 8.0 | 6.0 | 14.0 |",
		"| ambit-l4-h3 | 100 | 60 (**40 failed**) | 5.00 | 34.6 | 34.4 | 40.0 | 20.0 | 60.0 |",
	)
	if n := strings.Count(strings.TrimSpace(tab), "\n"); n != 1+len(rows) {
		t.Errorf("%d lines:\n%s", n+1, tab)
	}
	if IdleTable(nil) != "" {
		t.Error("a table without rows")
	}
}

// TestSweepsJSON pins sweeps.json's shape, and that latest.json's rows gain only
// capacity_qps, and only when there is one.
func TestSweepsJSON(t *testing.T) {
	var b bytes.Buffer
	if err := WriteSweeps(&b, Sweeps{}); err != nil || strings.Join(strings.Fields(b.String()), "") != `{"capacity":[],"idle":[]}` {
		t.Fatalf("empty: %q, %v", b.String(), err)
	}
	b.Reset()
	sw := Sweeps{Capacity: sampleSteps(), Idle: sampleIdle()}
	if err := WriteSweeps(&b, sw); err != nil {
		t.Fatal(err)
	}
	var raw map[string][]map[string]any
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		slices.Sort(k)
		return k
	}
	if got, want := keys(raw["capacity"][4]), []string{"connections", "errors", "held", "offered_qps", "p50_us", "p99_us", "proxy_vcpu", "qps", "scenario"}; !slices.Equal(got, want) {
		t.Errorf("step fields %v\nwant %v", got, want)
	}
	if got, want := keys(raw["idle"][0]), []string{"client_ztunnel_base_rss_kb", "client_ztunnel_kb_per_tunnel", "client_ztunnel_rss_kb", "errors", "held",
		"kb_per_tunnel", "open_s", "scenario", "server_ztunnel_base_rss_kb", "server_ztunnel_kb_per_tunnel", "server_ztunnel_rss_kb", "tunnels"}; !slices.Equal(got, want) {
		t.Errorf("idle fields %v\nwant %v", got, want)
	}
	var back Sweeps
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || !slices.Equal(back.Capacity, sw.Capacity) || !slices.Equal(back.Idle, sw.Idle) {
		t.Fatalf("round trip: %v\n%+v", err, back)
	}

	rows := sample()
	FillCapacity(rows, sampleSteps())
	b.Reset()
	if err := WriteJSON(&b, rows); err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	if err := json.Unmarshal(b.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	if list[0]["capacity_qps"] != 4000.0 {
		t.Errorf("direct's row: capacity_qps %v", list[0]["capacity_qps"])
	}
	if _, ok := list[4]["capacity_qps"]; ok {
		t.Errorf("haproxy-mtls held no rate, yet its row has capacity_qps %v", list[4]["capacity_qps"])
	}
}

// drawn draws a chart, decodes it, and checks that it has series lines: each series' colour
// on at least least pixels (its legend swatch has 140), and none of the next colour's.
func drawn(t *testing.T, draw func(io.Writer) error, series, least int) image.Image {
	t.Helper()
	var b bytes.Buffer
	if err := draw(&b); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range series {
		if n := colored(img, palette[i]); n < least {
			t.Errorf("series %d: %d pixels of its colour", i, n)
		}
	}
	if n := colored(img, palette[series]); n != 0 {
		t.Errorf("%d pixels of the colour after the %d series'", n, series)
	}
	return img
}

// colored counts the pixels of img in c.
func colored(img image.Image, c color.RGBA) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bl>>8) == c.B {
				n++
			}
		}
	}
	return n
}

func TestPlotCapacity(t *testing.T) {
	// a line per scenario (direct, ambit-l4, haproxy-mtls, istio-go-hbone), and the limit
	img := drawn(t, func(w io.Writer) error { return PlotCapacity(w, sampleSteps(), "capacity") }, 4, 150)
	if colored(img, limitColor) == 0 {
		t.Error("no limit line")
	}
	var b bytes.Buffer
	if err := PlotCapacity(&b, nil, "x"); err == nil {
		t.Error("an empty plot accepted")
	}
}

func TestPlotIdle(t *testing.T) {
	// ambit-l4 client and server, ambit-l4-h3 client and server
	drawn(t, func(w io.Writer) error { return PlotIdle(w, sampleIdle(), "idle") }, 4, 150)
	var b bytes.Buffer
	if err := PlotIdle(&b, nil, "x"); err == nil {
		t.Error("an empty plot accepted")
	}
}

func TestAxes(t *testing.T) {
	a := logAxis(150, 9000, fmtUS)
	if a.lo != 100 || a.hi != 10000 || !slices.Equal(a.ticks, []float64{100, 200, 500, 1000, 2000, 5000, 10000}) {
		t.Fatalf("log axis %+v", a)
	}
	if f := a.frac(1000); math.Abs(f-0.5) > 1e-9 {
		t.Fatalf("1000 on 100..10000 at %v", f)
	}
	l := linearAxis(43, nil)
	if l.lo != 0 || l.hi != 50 || !slices.Equal(l.ticks, []float64{0, 10, 20, 30, 40, 50}) {
		t.Fatalf("linear axis %+v", l)
	}
}
