package proxy

import (
	"strconv"
	"strings"
	"time"

	"ambit.dev/mesh/revoke"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// reporter is Istio's value for metrics a waypoint reports.
const reporter = "waypoint"

var requestLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "connection_security_policy", "response_flags",
}

// Metrics are Istio's standard request and TCP metrics, so existing dashboards work.
type Metrics struct {
	requests                   *prometheus.CounterVec
	duration, reqSize, rspSize *prometheus.HistogramVec
	tcpOpened, tcpClosed       *prometheus.CounterVec
	tcpSent, tcpReceived       *prometheus.CounterVec
	// overflows counts requests refused because a destination's connection pool queue was
	// full (reason "pending") and retries not made because its retry budget was spent
	// (reason "retry_budget"); mirrored counts the copies sent (or dropped) by mirroring.
	overflows, mirrored *prometheus.CounterVec
	// revoked counts the downstream tunnels of revoked identities, as ztunnel does.
	revoked *revoke.Metrics
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	bytesBuckets := prometheus.ExponentialBuckets(1, 10, 9)
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests handled by the waypoint."}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds", Help: "Request duration in milliseconds.",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}}, requestLabels),
		reqSize:     prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes", Help: "Request body sizes in bytes.", Buckets: bytesBuckets}, requestLabels),
		rspSize:     prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes", Help: "Response body sizes in bytes.", Buckets: bytesBuckets}, requestLabels),
		tcpOpened:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "TCP connections passed through."}, tcpLabels),
		tcpClosed:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "TCP connections passed through and closed."}, tcpLabels),
		tcpSent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent during response: from the destination back to the source, as Istio counts them."}, tcpLabels),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "Bytes received during request: from the source towards the destination, as Istio counts them."}, tcpLabels),
	}
	m.overflows = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_waypoint_upstream_overflow_total",
		Help: "Requests refused because a destination's connection pool was full (reason pending), and retries not made because its retry budget was spent (reason retry_budget)."},
		[]string{"destination_service", "reason"})
	m.mirrored = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_waypoint_mirrored_requests_total",
		Help: "Copies of requests sent to mirrors (result sent, failed or dropped)."}, []string{"destination_service", "result"})
	reg.MustRegister(m.requests, m.duration, m.reqSize, m.rspSize, m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpReceived, m.overflows, m.mirrored)
	m.revoked = revoke.NewMetrics(reg)
	return m
}

func workloadLabels(w *configv1.Workload) (name, ns, app, version string) {
	if w == nil {
		return "unknown", "unknown", "unknown", "unknown"
	}
	name = w.GetWorkloadName()
	if name == "" {
		name = w.GetName()
	}
	app, version = w.GetCanonicalService(), w.GetCanonicalRevision()
	if app == "" {
		app = name
	}
	if version == "" {
		version = "latest"
	}
	return name, w.GetNamespace(), app, version
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (m *Metrics) request(ex *exchange, reqBytes, rspBytes int64, d time.Duration) {
	if m == nil {
		return
	}
	s := m.series(ex)
	s.requests.Inc()
	s.duration.Observe(float64(d) / float64(time.Millisecond))
	s.reqSize.Observe(float64(reqBytes))
	s.rspSize.Observe(float64(rspBytes))
}

// requestSeries holds the four request metrics of one label set. A downstream connection
// keeps the last one it used: the requests of a keep-alive connection nearly all end alike
// (same endpoint, service, code and flags), and then skip the labels, which cost 19 strings
// hashed four times and the destination's identity formatted (docs/benchmarks.md).
type requestSeries struct {
	key                        seriesKey
	requests                   prometheus.Counter
	duration, reqSize, rspSize prometheus.Observer
}

// seriesKey is what a request's labels depend on beyond its downstream, whose labels (the
// source's) are the same for every request on it. A config push brings new workloads, so a
// pointer seen again is the same workload.
type seriesKey struct {
	dst     *configv1.Workload
	backend string
	grpc    bool
	code    int
	flags   string
}

func (m *Metrics) series(ex *exchange) *requestSeries {
	key := seriesKey{backend: ex.backend, grpc: ex.grpc, code: ex.code, flags: ex.flags}
	if ex.hasEP {
		key.dst = ex.ep.wl
	}
	if s := ex.d.series.Load(); s != nil && s.key == key {
		return s
	}
	sw, sns, sapp, sver := workloadLabels(ex.d.src)
	dstPrincipal := ""
	if key.dst != nil {
		if ids, err := workloadIdentities(key.dst, ex.p.cfg.TrustDomain); err == nil {
			dstPrincipal = ids[0].String()
		}
	}
	dw, dns, dapp, dver := workloadLabels(key.dst)
	svc := ex.backend
	svcName, svcNS := "unknown", "unknown"
	if svc != "" {
		if parts := splitHost(svc); len(parts) >= 2 {
			svcName, svcNS = parts[0], parts[1]
		}
	} else if ex.d.svc != nil {
		svc, svcName, svcNS = ex.d.svc.GetHostname(), ex.d.svc.GetName(), ex.d.svc.GetNamespace()
	}
	grpcStatus := ""
	if ex.grpc {
		grpcStatus = "-"
	}
	// In requestLabels' order; WithLabelValues spares a map.
	l := []string{
		reporter,
		sw, sns, orUnknown(ex.d.peer.String()), sapp, sver,
		dw, dns, orUnknown(dstPrincipal), dapp, dver,
		orUnknown(svc), svcName, svcNS,
		ex.protocol(), strconv.Itoa(ex.code), grpcStatus, ex.flags, "mutual_tls",
	}
	s := &requestSeries{key: key, requests: m.requests.WithLabelValues(l...), duration: m.duration.WithLabelValues(l...),
		reqSize: m.reqSize.WithLabelValues(l...), rspSize: m.rspSize.WithLabelValues(l...)}
	ex.d.series.Store(s)
	return s
}

func (m *Metrics) tcp(d *downstream, ep endpoint, request, response int64, failed bool) {
	if m == nil {
		return
	}
	sw, sns, _, _ := workloadLabels(d.src)
	dw, dns, _, _ := workloadLabels(ep.wl)
	dstPrincipal := ""
	if ep.wl != nil {
		if ids, err := workloadIdentities(ep.wl, spiffeTD(d)); err == nil {
			dstPrincipal = ids[0].String()
		}
	}
	svc := ""
	if d.svc != nil {
		svc = d.svc.GetHostname()
	}
	flags := "-"
	if failed {
		flags = "UF"
	}
	l := prometheus.Labels{
		"reporter":        reporter,
		"source_workload": sw, "source_workload_namespace": sns, "source_principal": orUnknown(d.peer.String()),
		"destination_workload": dw, "destination_workload_namespace": dns, "destination_principal": orUnknown(dstPrincipal),
		"destination_service": orUnknown(svc), "connection_security_policy": "mutual_tls", "response_flags": flags,
	}
	m.tcpOpened.With(l).Inc()
	m.tcpClosed.With(l).Inc()
	// As Istio counts them: sent is the response, received the request.
	m.tcpSent.With(l).Add(float64(response))
	m.tcpReceived.With(l).Add(float64(request))
}

// spiffeTD is the trust domain assumed for a workload that names none: the client's.
func spiffeTD(d *downstream) spiffeid.TrustDomain { return d.peer.TrustDomain() }

func splitHost(h string) []string { return strings.Split(h, ".") }

func (m *Metrics) overflow(svcKey, reason string) {
	_, host, _ := strings.Cut(svcKey, "/")
	m.overflows.WithLabelValues(host, reason).Inc()
}
