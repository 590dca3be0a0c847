package report

import (
	"cmp"
	"slices"
)

// Combine merges the rows of several rounds of the same run into one row per scenario and
// connection count: the median of each latency, rate, CPU, throughput and churn figure, the
// sum of the errors and the largest RSS. On a shared machine a burst of other work lands in
// one round of one scenario; the median of rounds interleaved across scenarios keeps it from
// deciding a comparison. Rows keep the order of their first appearance.
//
// AddedP99 is a row's p99 less the lowest of direct's over the rounds at the same number of
// connections: other work only ever adds latency, so direct's least disturbed round is the
// best measure of the path's own tail. Against direct's median, bursts that landed in two of
// its three rounds once put every scenario's added p99 at 16 connections below zero; each
// round against its own direct fails the same way.
func Combine(rounds [][]Row) []Row {
	type key struct {
		s string
		c int
	}
	var order []key
	groups := map[key][]Row{}
	for _, rows := range rounds {
		for _, r := range rows {
			k := key{r.Scenario, r.Connections}
			if _, ok := groups[k]; !ok {
				order = append(order, k)
			}
			groups[k] = append(groups[k], r)
		}
	}
	out := make([]Row, 0, len(order))
	for _, k := range order {
		g := groups[k]
		med := func(f func(Row) float64) float64 {
			v := make([]float64, len(g))
			for i, r := range g {
				v[i] = f(r)
			}
			return median(v)
		}
		r := Row{Scenario: k.s, Connections: k.c,
			QPS:            Round(med(func(r Row) float64 { return r.QPS }), 1),
			P50:            med(func(r Row) float64 { return r.P50 }),
			P90:            med(func(r Row) float64 { return r.P90 }),
			P99:            med(func(r Row) float64 { return r.P99 }),
			P999:           med(func(r Row) float64 { return r.P999 }),
			CPUPer1k:       Round(med(func(r Row) float64 { return r.CPUPer1k }), 4),
			ThroughputGbps: Round(med(func(r Row) float64 { return r.ThroughputGbps }), 3),
			ConnPerSec:     Round(med(func(r Row) float64 { return r.ConnPerSec }), 0),

			WaypointCPUPer1k: Round(med(func(r Row) float64 { return r.WaypointCPUPer1k }), 4),
		}
		for _, x := range g {
			r.Errors += x.Errors
			r.RSSMB = max(r.RSSMB, x.RSSMB)
			r.WaypointRSSMB = max(r.WaypointRSSMB, x.WaypointRSSMB)
			r.CapacityQPS = max(r.CapacityQPS, x.CapacityQPS) // swept in one round only
		}
		out = append(out, r)
	}
	lowest := map[int]float64{} // direct's lowest p99 over the rounds, by connections
	for _, k := range order {
		if k.s == Direct {
			lowest[k.c] = slices.MinFunc(groups[k], func(a, b Row) int { return cmp.Compare(a.P99, b.P99) }).P99
		}
	}
	for i := range out {
		if d, ok := lowest[out[i].Connections]; ok && out[i].Scenario != Direct {
			out[i].AddedP99 = round1(out[i].P99 - d)
		}
	}
	return out
}

// median of v; the mean of the middle two for an even count.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return round1((s[n/2-1] + s[n/2]) / 2)
}
