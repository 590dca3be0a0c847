// Package report holds the benchmark's published form: the rows of
// bench/results/latest.json, the Markdown section of docs/benchmarks.md with the targets
// judged side by side, and the latency plot.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
)

// Scenario names, in the order a run measures and the report lists them.
const (
	Direct  = "direct"
	AmbitL4 = "ambit-l4"
	// AmbitL4H3 is ambit-l4 with HBONE over HTTP/3 (QUIC on UDP 15008) between the ztunnels.
	AmbitL4H3   = "ambit-l4-h3"
	AmbitL7     = "ambit-l7"
	HAProxyMTLS = "haproxy-mtls"
	NginxMTLS   = "nginx-mtls"
	StunnelMTLS = "stunnel-mtls"
	// IstioGoHBONE is Istio's own Go HBONE (istio.io/istio/pkg/hbone), client and server.
	IstioGoHBONE = "istio-go-hbone"
)

// Peers are the other proxies measured beside ambit, each a pair as the ztunnels are.
var Peers = []string{IstioGoHBONE, HAProxyMTLS, NginxMTLS, StunnelMTLS}

// Row is one measurement: a scenario at a number of connections. Latencies are in
// microseconds; throughput_gbps and conn_per_s are the scenario's single-connection bulk
// throughput and its new-connection rate, measured once per scenario and repeated on each of
// its rows.
type Row struct {
	Scenario    string  `json:"scenario"`
	Connections int     `json:"connections"`
	QPS         float64 `json:"qps"`
	P50         float64 `json:"p50_us"`
	P90         float64 `json:"p90_us"`
	P99         float64 `json:"p99_us"`
	P999        float64 `json:"p999_us"`
	// AddedP99 is P99 minus the p99 of direct at the same number of connections (of a
	// run's rounds combined: the lowest of direct's rounds, see Combine).
	AddedP99 float64 `json:"added_p99_us"`
	Errors   int64   `json:"errors"`
	// CPUPer1k is the proxies' CPU (both of the pair, from their rusage) in vCPU per 1,000
	// requests per second achieved; RSSMB the largest resident set one proxy reached.
	CPUPer1k       float64 `json:"cpu_vcpu_per_1k"`
	RSSMB          float64 `json:"rss_mb"`
	ThroughputGbps float64 `json:"throughput_gbps"`
	ConnPerSec     float64 `json:"conn_per_s"`
	// WaypointCPUPer1k and WaypointRSSMB are the waypoint's own share of an ambit-l7 row
	// (the row's CPU and RSS cover the two ztunnels and the waypoint).
	WaypointCPUPer1k float64 `json:"waypoint_cpu_vcpu_per_1k,omitempty"`
	WaypointRSSMB    float64 `json:"waypoint_rss_mb,omitempty"`
	// CapacityQPS is the highest rate of the scenario's capacity sweep it held (see
	// Sweeps), repeated on each of its rows; absent when it was not swept or held none.
	CapacityQPS float64 `json:"capacity_qps,omitempty"`
}

// WriteJSON writes rows as an indented JSON list.
func WriteJSON(w io.Writer, rows []Row) error {
	if rows == nil {
		rows = []Row{}
	}
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Find returns the row of scenario at conns.
func Find(rows []Row, scenario string, conns int) (Row, bool) {
	i := slices.IndexFunc(rows, func(r Row) bool { return r.Scenario == scenario && r.Connections == conns })
	if i < 0 {
		return Row{}, false
	}
	return rows[i], true
}

// Scenarios returns the scenarios of rows in the order they first appear.
func Scenarios(rows []Row) []string {
	var out []string
	for _, r := range rows {
		if !slices.Contains(out, r.Scenario) {
			out = append(out, r.Scenario)
		}
	}
	return out
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// Round returns f with the given number of decimals.
func Round(f float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(f*p) / p
}

func fmtF(f float64, decimals int) string { return fmt.Sprintf("%.*f", decimals, f) }
