// Package metricstest reads counters out of a Prometheus registry for the proxies' tests.
package metricstest

import "github.com/prometheus/client_golang/prometheus"

// Sum adds up the counters named name in g whose labels include every pair of labels; 0
// when there are none (or g cannot be gathered).
func Sum(g prometheus.Gatherer, name string, labels map[string]string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			matched := 0
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v == lp.GetValue() {
					matched++
				}
			}
			if matched == len(labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
