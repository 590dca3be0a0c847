package proxy

import (
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
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		opened:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened."}, tcpLabels),
		closed:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed."}, tcpLabels),
		sent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent during response: from the destination back to the source, as Istio counts them."}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "Bytes received during request: from the source towards the destination, as Istio counts them."}, tcpLabels),
	}
	reg.MustRegister(m.opened, m.closed, m.sent, m.received)
	m.revoked = revoke.NewMetrics(reg)
	return m
}

// connMetrics is one connection's label set.
type connMetrics struct {
	m      *Metrics
	labels prometheus.Labels
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
	c := connMetrics{m: m, labels: prometheus.Labels{
		"reporter": reporter, "source_workload": sw, "source_workload_namespace": sns, "source_principal": srcPrincipal,
		"destination_workload": dw, "destination_workload_namespace": dns, "destination_principal": dstPrincipal,
		"connection_security_policy": policy, "response_flags": "-", "tunnel_protocol": tunnel,
	}}
	m.opened.With(c.labels).Inc()
	return c
}

// deny closes the connection's record with Istio's "unauthorized" response flag.
func (c connMetrics) deny() {
	if c.m == nil {
		return
	}
	l := prometheus.Labels{}
	for k, v := range c.labels {
		l[k] = v
	}
	l["response_flags"] = "UAEX"
	c.m.closed.With(l).Inc()
}

// close counts the connection closed with the bytes it carried each way: request from the
// source towards the destination, response back. Istio's names count them from the
// destination's side whoever reports: sent is the response, received the request.
func (c connMetrics) close(request, response int64) {
	if c.m == nil {
		return
	}
	c.m.closed.With(c.labels).Inc()
	c.m.sent.With(c.labels).Add(float64(response))
	c.m.received.With(c.labels).Add(float64(request))
}
