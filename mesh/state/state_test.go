package state

import (
	"net/netip"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func workload(name, addr string, status configv1.WorkloadStatus, policies ...string) *configv1.Workload {
	return &configv1.Workload{
		Uid: name, Name: name, Namespace: "shop", Addresses: [][]byte{ip(addr)}, Status: status,
		Services: map[string]*configv1.PortList{
			"shop/web.shop.svc.cluster.local": {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}},
		},
		AuthorizationPolicies: policies,
	}
}

func TestApplyAndLookups(t *testing.T) {
	s := New()
	svc := &configv1.Service{Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
		Addresses: []*configv1.NetworkAddress{{Address: ip("10.96.0.10")}}, Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}}
	must := func(typeURL string, m map[string]proto.Message, rm ...string) {
		t.Helper()
		if err := s.Apply(typeURL, m, rm); err != nil {
			t.Fatal(err)
		}
	}
	must(configv1.ServiceTypeURL, map[string]proto.Message{"shop/web.shop.svc.cluster.local": svc})
	must(configv1.WorkloadTypeURL, map[string]proto.Message{
		"c//Pod/shop/a": workload("a", "10.0.0.1", configv1.WorkloadStatus_HEALTHY, "shop/only-a"),
		"c//Pod/shop/b": workload("b", "10.0.0.2", configv1.WorkloadStatus_UNHEALTHY),
	})
	must(configv1.AuthorizationTypeURL, map[string]proto.Message{
		"shop/only-a":    &configv1.Authorization{Name: "only-a", Namespace: "shop"},
		"shop/ns":        &configv1.Authorization{Name: "ns", Namespace: "shop", Scope: configv1.Authorization_NAMESPACE},
		"other/ns":       &configv1.Authorization{Name: "ns", Namespace: "other", Scope: configv1.Authorization_NAMESPACE},
		"ambit-system/g": &configv1.Authorization{Name: "g", Namespace: "ambit-system", Scope: configv1.Authorization_GLOBAL},
	})

	a, ok := s.Workload(netip.MustParseAddr("10.0.0.1"))
	if !ok || a.GetName() != "a" {
		t.Fatalf("Workload(10.0.0.1) = %v, %v", a, ok)
	}
	if got, ok := s.Service(netip.MustParseAddr("10.96.0.10")); !ok || got.GetName() != "web" {
		t.Fatalf("Service(VIP) = %v, %v", got, ok)
	}
	eps := s.Endpoints(svc, 80)
	if len(eps) != 1 || eps[0].Addr != netip.MustParseAddrPort("10.0.0.1:8080") {
		t.Fatalf("endpoints = %+v, want only the healthy a:8080", eps)
	}
	if eps := s.Endpoints(svc, 443); len(eps) != 0 {
		t.Fatalf("endpoints on a port the service lacks = %+v", eps)
	}
	var names []string
	for _, p := range s.Policies(a) {
		names = append(names, p.GetNamespace()+"/"+p.GetName())
	}
	if want := []string{"ambit-system/g", "shop/no-such", "shop/ns", "shop/only-a"}; len(names) != 3 || names[0] != want[0] || names[1] != want[2] || names[2] != want[3] {
		t.Fatalf("policies for a = %v", names)
	}
	b, _ := s.Workload(netip.MustParseAddr("10.0.0.2"))
	if len(s.Policies(b)) != 2 {
		t.Fatalf("policies for b = %v, want global and namespace only", s.Policies(b))
	}

	// A bad batch changes nothing.
	err := s.Apply(configv1.WorkloadTypeURL, map[string]proto.Message{
		"c//Pod/shop/c": &configv1.Workload{Name: "c", Addresses: [][]byte{{1, 2, 3}}},
		"c//Pod/shop/a": workload("a", "10.0.0.9", configv1.WorkloadStatus_HEALTHY),
	}, nil)
	if err == nil {
		t.Fatal("a 3-byte address was accepted")
	}
	if _, ok := s.Workload(netip.MustParseAddr("10.0.0.1")); !ok {
		t.Fatal("a rejected batch changed the state")
	}
	if err := s.Apply(configv1.WorkloadTypeURL, map[string]proto.Message{"x": &configv1.Service{}}, nil); err == nil {
		t.Fatal("a Service under the Workload type was accepted")
	}

	// Removal, and the unhealthy endpoint is used when no healthy one is left.
	must(configv1.WorkloadTypeURL, nil, "c//Pod/shop/a")
	if _, ok := s.Workload(netip.MustParseAddr("10.0.0.1")); ok {
		t.Fatal("removed workload still found")
	}
	if eps := s.Endpoints(svc, 80); len(eps) != 1 || eps[0].Workload.GetName() != "b" {
		t.Fatalf("endpoints after removal = %+v", eps)
	}
}

func TestStrict(t *testing.T) {
	s := New()
	w := &configv1.Workload{}
	if s.Strict(w) {
		t.Fatal("default is PERMISSIVE")
	}
	s.SetMeshStrict(true)
	if !s.Strict(w) {
		t.Fatal("mesh-wide STRICT not applied")
	}
	w.PeerAuthentication = configv1.PeerAuthenticationMode_PERMISSIVE
	if s.Strict(w) {
		t.Fatal("workload PERMISSIVE should override mesh STRICT")
	}
}
