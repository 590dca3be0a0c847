// Package revoketest reads the revocation metric for tests of the proxies that register it.
package revoketest

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Count is ambit_revoked_connections_total for reporter, the identity id and result
// (revoke.ResultClosed or revoke.ResultRefused) in g; 0 when the series does not exist.
func Count(g prometheus.Gatherer, reporter string, id spiffeid.ID, result string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != "ambit_revoked_connections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["reporter"] == reporter && l["source_principal"] == id.String() && l["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
