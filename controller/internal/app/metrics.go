package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"ambit.dev/controller/internal/model"
)

type metrics struct {
	leader     prometheus.Gauge
	generation prometheus.Gauge
	invalid    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambit_controller_leader", Help: "1 while this replica holds the leader Lease (always 1 without leader election).",
		}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambit_controller_config_generation", Help: "Commits of the config model that changed some resource.",
		}),
		invalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambit_controller_invalid_objects", Help: "Objects refused by validation whose last good version is in force.",
		}),
	}
	reg.MustRegister(m.leader, m.generation, m.invalid)
	return m
}

func (m *metrics) observe(idx *model.Index) {
	m.generation.Set(float64(idx.Generation()))
	m.invalid.Set(float64(len(idx.Errors())))
}
