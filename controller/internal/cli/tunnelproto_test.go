package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
)

// TestZtunnelConfigWorkloadsH3: the PROTOCOL column says HBONE-H3 for a workload marked
// HBONE_H3, and marks it when this ztunnel's pods fell back to HTTP/2 for it.
func TestZtunnelConfigWorkloadsH3(t *testing.T) {
	d := dump.Ztunnel{
		Sections: dump.Sections{Workloads: pj(t,
			&configv1.Workload{Uid: "u1", Name: "a", Namespace: "h3", Node: "node-a", Addresses: [][]byte{ip("10.10.1.2")},
				ServiceAccount: "a", TunnelProtocol: configv1.TunnelProtocol_HBONE_H3},
			&configv1.Workload{Uid: "u2", Name: "b", Namespace: "h3", Node: "node-b", Addresses: [][]byte{ip("10.10.2.2")},
				ServiceAccount: "b", TunnelProtocol: configv1.TunnelProtocol_HBONE_H3},
		)},
		TunnelFallbacks: []dump.TunnelFallback{{Pod: "h3/a", Peer: "10.10.2.2:15008", Until: time.Now().Add(time.Minute)}},
	}
	body, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, Options{}, "ztunnel-config", "workloads", "--admin-addr", ztunnelAdmin(t, body))
	if err != nil {
		t.Fatal(err)
	}
	want := `
NAMESPACE   NAME   IP          NODE     IDENTITY                               PROTOCOL                   WAYPOINT
h3          a      10.10.1.2   node-a   spiffe://cluster.local/ns/h3/sa/a      HBONE-H3                   None
h3          b      10.10.2.2   node-b   spiffe://cluster.local/ns/h3/sa/b      HBONE-H3(FALLBACK-HBONE)   None
`
	if strings.Join(strings.Fields(out), " ") != strings.Join(strings.Fields(want), " ") {
		t.Fatalf("got:\n%s\nwant:\n%s", out, strings.TrimPrefix(want, "\n"))
	}
}
