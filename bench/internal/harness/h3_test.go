package harness

import (
	"slices"
	"strings"
	"testing"

	"ambit.dev/bench/internal/report"
)

// TestAmbitL4H3Wiring: ambit-l4-h3 is measured right after ambit-l4, can be picked alone,
// and its readiness check counts only the client ztunnel's own connections of the asked
// tunnel protocol.
func TestAmbitL4H3Wiring(t *testing.T) {
	i := slices.Index(AllScenarios, report.AmbitL4H3)
	if i < 1 || AllScenarios[i-1] != report.AmbitL4 {
		t.Fatalf("scenarios %v: want ambit-l4-h3 right after ambit-l4", AllScenarios)
	}
	page := `# HELP istio_tcp_connections_opened_total x
istio_tcp_connections_opened_total{reporter="source",source_workload="client",tunnel_protocol="HBONE_H3"} 3
istio_tcp_connections_opened_total{reporter="destination",source_workload="unknown",tunnel_protocol="HBONE_H3"} 5
istio_tcp_connections_opened_total{reporter="source",source_workload="client",tunnel_protocol="HBONE"} 7
istio_tcp_connections_opened_total{reporter="source",source_workload="other",tunnel_protocol="HBONE_H3"} 1
istio_tcp_connections_closed_total{reporter="source",tunnel_protocol="HBONE_H3"} 100
`
	for tunnel, want := range map[string]float64{"HBONE_H3": 4, "HBONE": 7, "none": 0} {
		got, err := sourceConnsOpened(strings.NewReader(page), tunnel)
		if err != nil || got != want {
			t.Errorf("%s: %v, %v; want %v", tunnel, got, err, want)
		}
	}
}
