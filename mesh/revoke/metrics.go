package revoke

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Results of a revoked identity's connection, the metric's result label.
const (
	ResultClosed  = "closed"  // live when the identity was revoked, closed then
	ResultRefused = "refused" // opened after, refused
)

// Metrics count the connections ended because their identity was revoked. ztunnel and the
// waypoint register the same metric, told apart by reporter as Istio's are.
type Metrics struct {
	conns *prometheus.CounterVec
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{conns: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambit_revoked_connections_total",
		Help: "Connections of an identity that left the mesh: closed while live (result closed) or refused when new (result refused).",
	}, []string{"reporter", "source_principal", "result"})}
	reg.MustRegister(m.conns)
	return m
}

func (m *Metrics) add(reporter string, id spiffeid.ID, result string, n int) {
	if m == nil || n == 0 {
		return
	}
	m.conns.WithLabelValues(reporter, id.String(), result).Add(float64(n))
}
