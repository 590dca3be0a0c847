// Package revoketest reads the revocation metric for tests of the proxies that register it.
package revoketest

import (
	"ambit.dev/mesh/metricstest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Count is ambit_revoked_connections_total for reporter, the identity id and result
// (revoke.ResultClosed or revoke.ResultRefused) in g; 0 when the series does not exist.
func Count(g prometheus.Gatherer, reporter string, id spiffeid.ID, result string) float64 {
	return metricstest.Sum(g, "ambit_revoked_connections_total",
		map[string]string{"reporter": reporter, "source_principal": id.String(), "result": result})
}
