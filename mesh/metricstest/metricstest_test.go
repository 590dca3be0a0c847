package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bytes_total"}, []string{"reporter", "dir"})
	reg.MustRegister(c)
	c.WithLabelValues("source", "in").Add(3)
	c.WithLabelValues("source", "out").Add(4)
	c.WithLabelValues("destination", "in").Add(5)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"bytes_total", map[string]string{"reporter": "source"}, 7},
		{"bytes_total", map[string]string{"reporter": "source", "dir": "out"}, 4},
		{"bytes_total", nil, 12},
		{"bytes_total", map[string]string{"reporter": "waypoint"}, 0},
		{"other_total", nil, 0},
	} {
		if got := Sum(reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("Sum(%s, %v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
