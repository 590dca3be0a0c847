package proxy

import (
	"fmt"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
)

// TestPodAddressReusedByOtherIdentity (Istio ztunnel#1637): the server pod is deleted and its
// IP given to a pod of another service account. The client's pooled tunnel was verified for
// the old identity; no connection may reach the new pod through it, and the switch must not
// cost a burst of 503s. The pool is keyed by the expected destination identities, so the
// first connection after the change dials a new tunnel and verifies the new identity.
func TestPodAddressReusedByOtherIdentity(t *testing.T) {
	m := newMesh(t)
	startApp(t)
	for range 5 {
		if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
			t.Fatalf("call = %q, %v", got, err)
		}
	}
	if n := m.client.client.Conns(); n != 1 {
		t.Fatalf("%d pooled tunnels, want 1", n)
	}

	// The state gives the address to a pod of service account "other" while the old pod's
	// tunnel is still pooled and the old pod still answers: the pooled tunnel is not used
	// (it was verified for "server"), and a new one refuses the old pod's certificate.
	m.apply(configv1.WorkloadTypeURL, nil, "c//Pod/shop/server")
	nw := workloadFor("server-2", serverIP, "other")
	m.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/server-2": nw})
	if got, err := m.call(serverIP + ":8080"); err == nil && got != "" {
		t.Fatalf("call reached the old pod through a tunnel verified for its identity: %q", got)
	}
	// The old pod is deleted and the new one starts on the address.
	m.server.Close()
	m.server = m.startPod(nw, serverIP)

	opened := func() float64 {
		return testutil.ToFloat64(m.node.Metrics.opened.With(prometheus.Labels{
			"reporter": "source", "connection_security_policy": "mutual_tls", "tunnel_protocol": "HBONE",
			"destination_principal": "spiffe://cluster.local/ns/shop/sa/other", "destination_workload": "server-2",
			"destination_workload_namespace": "shop", "response_flags": "-",
			"source_principal": "spiffe://cluster.local/ns/shop/sa/client", "source_workload": "client", "source_workload_namespace": "shop",
		}))
	}
	before := opened()
	const calls = 50
	for i := range calls {
		if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
			t.Fatalf("call %d after the address changed hands = %q, %v", i, got, err)
		}
	}
	// Every one of them went to a tunnel verified for the new identity.
	n := opened() - before
	if n != calls {
		t.Fatalf("%v connections verified for the new identity, want %d", n, calls)
	}
	// And the server saw them from the client's identity, over its own tunnels, each closed
	// once its call ended (the last one's teardown may trail the client's read of EOF).
	wait.Until(t, 5*time.Second, "the server's inbound tunnels closed", func() error {
		if got := m.server.peerTunnels(); got != 0 {
			return fmt.Errorf("%d inbound tunnels still open", got)
		}
		return nil
	})
}
