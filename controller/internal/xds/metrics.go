package xds

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	pushes    *prometheus.CounterVec
	pushTime  prometheus.Histogram
	connected prometheus.Gauge
	nacks     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_xds_pushes_total",
			Help: "Delta xDS responses sent to proxies, by resource type.",
		}, []string{"type"}),
		pushTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ambit_xds_push_duration_seconds",
			Help:    "Time from a config change (or a proxy's connect) to the response that carries it being sent.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambit_xds_connected_proxies",
			Help: "Proxies with an open xDS stream.",
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_xds_rejects_total",
			Help: "Delta xDS responses proxies rejected (NACKed), by resource type.",
		}, []string{"type"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.pushes, m.pushTime, m.connected, m.nacks} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
