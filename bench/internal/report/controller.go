package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
)

// ControllerRun is one size of `make bench-controller`: the fields the plots draw of the JSON
// line the push benchmark prints (its result type, in controller/internal/xds/pushbench, which
// this module cannot import; the names are the contract between the two).
type ControllerRun struct {
	Pods        int     `json:"pods"`
	Clients     int     `json:"clients"`
	FullSyncMS  float64 `json:"full_sync_ms"`
	ChangeP50MS float64 `json:"change_p50_ms"`
	ChangeP99MS float64 `json:"change_p99_ms"`
	RSSMB       float64 `json:"rss_mb"`
	// The CPU each side spent for the full sync.
	SyncControllerCPUMS float64 `json:"sync_controller_cpu_ms"`
	SyncClientsCPUMS    float64 `json:"sync_clients_cpu_ms"`
}

// controllerFields are the fields a line must have: a run without one would be drawn at zero.
var controllerFields = []string{"pods", "full_sync_ms", "change_p50_ms", "change_p99_ms", "rss_mb",
	"sync_controller_cpu_ms", "sync_clients_cpu_ms"}

// ReadControllerRuns reads bench/results/controller.jsonl: a JSON object a line, blank lines
// skipped. A line that is not an object, lacks one of the fields the plots draw, or repeats a
// size is an error naming its line.
func ReadControllerRuns(r io.Reader) ([]ControllerRun, error) {
	var runs []ControllerRun
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(line, &fields); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		for _, f := range controllerFields {
			if _, ok := fields[f]; !ok {
				return nil, fmt.Errorf("line %d: no %q", n, f)
			}
		}
		var run ControllerRun
		if err := json.Unmarshal(line, &run); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if run.Pods <= 0 {
			return nil, fmt.Errorf("line %d: pods %d, want a positive count", n, run.Pods)
		}
		if slices.ContainsFunc(runs, func(o ControllerRun) bool { return o.Pods == run.Pods }) {
			return nil, fmt.Errorf("line %d: a second run of %d pods", n, run.Pods)
		}
		runs = append(runs, run)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("no runs")
	}
	slices.SortFunc(runs, func(a, b ControllerRun) int { return a.Pods - b.Pods })
	return runs, nil
}

// PlotControllerTime draws the push benchmark's times against the mesh's size, both on log
// scales: the full sync's wall time and the CPU each side spent for it, and a change's p50 and
// p99 to reach every client.
func PlotControllerTime(w io.Writer, runs []ControllerRun, title string) error {
	if len(runs) == 0 {
		return fmt.Errorf("controller plot: no runs")
	}
	lines := []series{{name: "full sync, wall"}, {name: "sync: controller CPU"}, {name: "sync: clients' CPU"},
		{name: "change p50"}, {name: "change p99"}}
	lo, hi := math.Inf(1), 0.0
	for _, r := range runs {
		for i, v := range []float64{r.FullSyncMS, r.SyncControllerCPUMS, r.SyncClientsCPUMS, r.ChangeP50MS, r.ChangeP99MS} {
			if v <= 0 {
				continue // nothing to draw on a log scale
			}
			lines[i].pts = append(lines[i].pts, point{x: float64(r.Pods), y: v})
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if hi == 0 {
		return fmt.Errorf("controller plot: every time is zero")
	}
	c := chart{
		title:   title,
		caption: "milliseconds (log scale) against pods in the mesh (log scale); 100 xDS clients on the same cores",
		x:       podAxis(runs), y: logAxis(lo, hi, fmtMS),
		lines: lines,
	}
	return c.draw(w)
}

// PlotControllerRSS draws the controller's peak resident set against the mesh's size, both
// on linear scales, where memory that grows in proportion to the pods is a straight line.
func PlotControllerRSS(w io.Writer, runs []ControllerRun, title string) error {
	if len(runs) == 0 {
		return fmt.Errorf("controller plot: no runs")
	}
	l := series{name: "controller peak RSS"}
	var hi float64
	for _, r := range runs {
		l.pts = append(l.pts, point{x: float64(r.Pods), y: r.RSSMB})
		hi = max(hi, r.RSSMB)
	}
	x := linearAxis(float64(runs[len(runs)-1].Pods)*1.05, fmtPods)
	c := chart{
		title:   title,
		caption: "controller peak resident set in MB against pods in the mesh",
		x:       x, y: linearAxis(hi*1.1, func(v float64) string { return fmt.Sprintf("%gMB", v) }),
		lines: []series{l},
	}
	return c.draw(w)
}

// podAxis is a log axis with a tick at each size run, labelled 10k, 50k, ...
func podAxis(runs []ControllerRun) axis {
	var sizes []float64
	for _, r := range runs {
		sizes = append(sizes, float64(r.Pods))
	}
	a := logTicks(sizes, 1.3)
	a.format = fmtPods
	return a
}
