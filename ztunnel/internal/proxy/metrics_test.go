package proxy

import (
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSeriesKeyHasEveryLabel(t *testing.T) {
	if len(seriesKey{}) != len(tcpLabels) {
		t.Fatalf("seriesKey holds %d values, tcpLabels names %d", len(seriesKey{}), len(tcpLabels))
	}
}

// Connections of one label set share one series, resolved once: opening and closing one
// allocates nothing, and every count lands under the right labels.
func TestConnectionsShareTheirSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	src := &configv1.Workload{Name: "client-1", WorkloadName: "client", Namespace: "a"}
	dst := &configv1.Workload{Name: "server-1", WorkloadName: "server", Namespace: "b"}
	open := func() connMetrics {
		return m.open(reporterSource, src, dst, "spiffe://td/ns/a/sa/client", "spiffe://td/ns/b/sa/server", true, "HBONE")
	}
	c := open()
	c.close(10, 20)
	if allocs := testing.AllocsPerRun(100, func() { open().close(1, 2) }); allocs != 0 {
		t.Fatalf("opening and closing a connection of a known label set allocates %.0f times, want 0", allocs)
	}
	if got := len(m.series); got != 1 {
		t.Fatalf("%d series after 101 connections of one label set, want 1", got)
	}
	open().deny()
	other := m.open(reporterDestination, nil, dst, "", "spiffe://td/ns/b/sa/server", false, tunnelNone)
	other.close(5, 0)

	labels := prometheus.Labels{
		"reporter": "source", "source_workload": "client", "source_workload_namespace": "a", "source_principal": "spiffe://td/ns/a/sa/client",
		"destination_workload": "server", "destination_workload_namespace": "b", "destination_principal": "spiffe://td/ns/b/sa/server",
		"connection_security_policy": "mutual_tls", "response_flags": "-", "tunnel_protocol": "HBONE",
	}
	for i, tc := range []struct {
		vec  *prometheus.CounterVec
		want float64
	}{
		{m.opened, 1 + 101 + 1}, {m.closed, 1 + 101}, {m.sent, 20 + 101*2}, {m.received, 10 + 101*1}, // AllocsPerRun runs once more than asked
	} {
		if got := testutil.ToFloat64(tc.vec.With(labels)); got != tc.want {
			t.Errorf("counter %d: %v, want %v", i, got, tc.want)
		}
	}
	labels["response_flags"] = "UAEX"
	if got := testutil.ToFloat64(m.closed.With(labels)); got != 1 {
		t.Errorf("denied connections closed: %v, want 1", got)
	}
	if got := testutil.CollectAndCount(m.opened); got != 2 {
		t.Errorf("%d opened series, want 2 (source and destination)", got)
	}
}

// BenchmarkConnMetrics is one connection's metrics: opened, then closed with its bytes.
func BenchmarkConnMetrics(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	src := &configv1.Workload{Name: "client-1", WorkloadName: "client", Namespace: "a"}
	dst := &configv1.Workload{Name: "server-1", WorkloadName: "server", Namespace: "b"}
	b.ReportAllocs()
	for b.Loop() {
		m.open(reporterSource, src, dst, "spiffe://td/ns/a/sa/client", "spiffe://td/ns/b/sa/server", true, "HBONE").close(100, 1000)
	}
}
