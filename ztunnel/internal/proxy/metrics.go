package proxy

import (
	"slices"
	"sync"

	"ambit.dev/mesh/revoke"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// Reporter values, as in Istio: which end of the connection the metric describes.
const (
	reporterSource      = "source"
	reporterDestination = "destination"
)

var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"connection_security_policy", "response_flags",
	// tunnel_protocol is ambit's: HBONE (HTTP/2), HBONE_H3 (HTTP/3), or none for plain TCP.
	"tunnel_protocol",
}

// Metrics are Istio's standard TCP metrics, so existing dashboards work.
type Metrics struct {
	opened, closed, sent, received *prometheus.CounterVec
	// revoked counts the tunnels of revoked identities, as the waypoint does.
	revoked *revoke.Metrics

	// Every label set seen, with its four counters resolved: a connection holds a pointer
	// to its series, where a prometheus.Labels map of its own cost about 400-650 bytes for
	// the connection's life, and every count hashed and validated the ten values again. The
	// vectors keep a series for good once it exists, so this holds no more than they do.
	mu     sync.Mutex
	series map[seriesKey]*series
}

// seriesKey is a label set's values in tcpLabels' order.
type seriesKey [10]string

// flagsLabel is response_flags' place in a seriesKey.
var flagsLabel = slices.Index(tcpLabels, "response_flags")

// series is one label set's counters.
type series struct {
	key                            seriesKey // for deny, which counts under another flag
	opened, closed, sent, received prometheus.Counter
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		opened:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened."}, tcpLabels),
		closed:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed."}, tcpLabels),
		sent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent during response: from the destination back to the source, as Istio counts them."}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "Bytes received during request: from the source towards the destination, as Istio counts them."}, tcpLabels),
	}
	m.series = map[seriesKey]*series{}
	reg.MustRegister(m.opened, m.closed, m.sent, m.received)
	m.revoked = revoke.NewMetrics(reg)
	return m
}

// connMetrics is one connection's series; the zero value counts nothing.
type connMetrics struct {
	m *Metrics
	s *series
}

func workloadLabels(w *configv1.Workload) (name, ns string) {
	if w == nil {
		return "unknown", "unknown"
	}
	name = w.GetWorkloadName()
	if name == "" {
		name = w.GetName()
	}
	return name, w.GetNamespace()
}

// tunnelNone is the tunnel_protocol of a connection that is not tunnelled.
const tunnelNone = "none"

func (m *Metrics) open(reporter string, src, dst *configv1.Workload, srcPrincipal, dstPrincipal string, mtls bool, tunnel string) connMetrics {
	if m == nil {
		return connMetrics{}
	}
	sw, sns := workloadLabels(src)
	dw, dns := workloadLabels(dst)
	policy := "none"
	if mtls {
		policy = "mutual_tls"
	}
	if srcPrincipal == "" {
		srcPrincipal = "unknown"
	}
	if dstPrincipal == "" {
		dstPrincipal = "unknown"
	}
	s := m.lookup(seriesKey{reporter, sw, sns, srcPrincipal, dw, dns, dstPrincipal, policy, "-", tunnel})
	s.opened.Inc()
	return connMetrics{m: m, s: s}
}

// lookup returns the series of the label values k, resolving its counters the first time.
func (m *Metrics) lookup(k seriesKey) *series {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.series[k]; ok {
		return s
	}
	s := &series{key: k, opened: m.opened.WithLabelValues(k[:]...), closed: m.closed.WithLabelValues(k[:]...),
		sent: m.sent.WithLabelValues(k[:]...), received: m.received.WithLabelValues(k[:]...)}
	m.series[k] = s
	return s
}

// deny closes the connection's record with Istio's "unauthorized" response flag.
func (c connMetrics) deny() {
	if c.m == nil {
		return
	}
	k := c.s.key
	k[flagsLabel] = "UAEX"
	c.m.closed.WithLabelValues(k[:]...).Inc()
}

// close counts the connection closed with the bytes it carried each way: request from the
// source towards the destination, response back. Istio's names count them from the
// destination's side whoever reports: sent is the response, received the request.
func (c connMetrics) close(request, response int64) {
	if c.m == nil {
		return
	}
	c.s.closed.Inc()
	c.s.sent.Add(float64(response))
	c.s.received.Add(float64(request))
}
