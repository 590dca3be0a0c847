package model

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
)

func labObjects() []runtime.Object {
	amb := map[string]string{LabelDataplaneMode: ModeAmbient}
	svc := service("shop", "server", "10.96.0.10", map[string]string{LabelUseWaypoint: "wp"}, map[string]string{"app": "server"})
	return []runtime.Object{
		namespace("shop", amb),
		namespace("ambit-system", nil),
		pod("shop", "client", "node-a", "10.0.1.1", map[string]string{"app": "client"}, withSA("client")),
		pod("shop", "server", "node-b", "10.0.2.1", map[string]string{"app": "server"}, withSA("server")),
		svc,
		waypointGW("shop", "wp", "service", "10.0.3.1"),
		&secv1.AuthorizationPolicy{ObjectMeta: meta("shop", "server-allow", nil), Spec: secv1.AuthorizationPolicySpec{
			Selector: &secv1.WorkloadSelector{MatchLabels: map[string]string{"app": "server"}},
			Rules:    []secv1.Rule{{From: []secv1.RuleFrom{{Source: secv1.Source{Principals: []string{"cluster.local/ns/shop/sa/client"}}}}}},
		}},
		&secv1.AuthorizationPolicy{ObjectMeta: meta("shop", "ns-deny", nil), Spec: secv1.AuthorizationPolicySpec{Action: "DENY",
			Rules: []secv1.Rule{{From: []secv1.RuleFrom{{Source: secv1.Source{Namespaces: []string{"evil"}}}}}}}},
		&secv1.AuthorizationPolicy{ObjectMeta: meta("ambit-system", "global", nil), Spec: secv1.AuthorizationPolicySpec{Action: "DENY",
			Rules: []secv1.Rule{{From: []secv1.RuleFrom{{Source: secv1.Source{IPBlocks: []string{"192.0.2.0/24"}}}}}}}},
		&secv1.AuthorizationPolicy{ObjectMeta: meta("other", "other-ns", nil)},
		&secv1.AuthorizationPolicy{ObjectMeta: meta("shop", "at-waypoint", nil), Spec: secv1.AuthorizationPolicySpec{
			TargetRefs: []secv1.PolicyTargetReference{{Kind: "Service", Name: "server"}}}},
		&secv1.AuthorizationPolicy{ObjectMeta: meta("shop", "at-gateway", nil), Spec: secv1.AuthorizationPolicySpec{
			TargetRefs: []secv1.PolicyTargetReference{{Group: gatewayv1.GroupName, Kind: "Gateway", Name: "wp"}}}},
		&secv1.PeerAuthentication{ObjectMeta: meta("shop", "strict", nil), Spec: secv1.PeerAuthenticationSpec{MTLS: &secv1.MTLS{Mode: "STRICT"}}},
		httpRoute("shop", "server-route", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("server", 80, nil)}}),
	}
}

func names(m map[string]Resource) []string { return slices.Sorted(maps.Keys(m)) }

func TestIndexFor(t *testing.T) {
	// The HTTPRoute's parent is reviews; add one whose parent is server.
	objs := labObjects()
	r := objs[len(objs)-1].(*gatewayv1.HTTPRoute)
	r.Spec.ParentRefs[0].Name = "server"
	r.Spec.ParentRefs[0].Port = nil
	x, errs := Build(Options{}, objs)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	tests := []struct {
		name   string
		proxy  Proxy
		authz  []string
		routes []string
	}{
		{"ztunnel on server node", Proxy{ID: "z-b", Node: "node-b", Kind: KindZtunnel}, []string{"ambit-system/global", "shop/ns-deny", "shop/server-allow"}, nil},
		{"ztunnel on client node", Proxy{ID: "z-a", Node: "node-a", Kind: KindZtunnel}, []string{"ambit-system/global", "shop/ns-deny"}, nil},
		{"ztunnel on empty node", Proxy{ID: "z-c", Node: "node-c", Kind: KindZtunnel}, []string{}, nil},
		{"waypoint", Proxy{ID: "wp", Kind: KindWaypoint, Namespace: "shop", Name: "wp"}, []string{"shop/at-gateway", "shop/at-waypoint"}, []string{"shop/server.shop.svc.cluster.local"}},
		{"other waypoint", Proxy{ID: "wp2", Kind: KindWaypoint, Namespace: "shop", Name: "wp2"}, []string{}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := x.For(tt.proxy)
			if got := names(res[configv1.AuthorizationTypeURL]); !slices.Equal(got, tt.authz) {
				t.Fatalf("authorizations %v, want %v", got, tt.authz)
			}
			if got := names(res[configv1.RouteConfigTypeURL]); tt.routes != nil && !slices.Equal(got, tt.routes) {
				t.Fatalf("routes %v, want %v", got, tt.routes)
			}
			if tt.proxy.Kind == KindZtunnel && res[configv1.RouteConfigTypeURL] != nil {
				t.Fatalf("ztunnel got route configs")
			}
			if got := len(res[configv1.WorkloadTypeURL]); got != 2 {
				t.Fatalf("%d workloads, want 2", got)
			}
			if got := names(res[configv1.ServiceTypeURL]); !slices.Equal(got, []string{"shop/server.shop.svc.cluster.local"}) {
				t.Fatalf("services %v", got)
			}
			if got := names(res[configv1.WaypointTypeURL]); !slices.Equal(got, []string{"shop/wp"}) {
				t.Fatalf("waypoints %v", got)
			}
		})
	}
	srv := x.For(Proxy{Kind: KindZtunnel})[configv1.WorkloadTypeURL]["Kubernetes//Pod/shop/server"].Message.(*configv1.Workload)
	if srv.PeerAuthentication != configv1.PeerAuthenticationMode_STRICT || !slices.Equal(srv.AuthorizationPolicies, []string{"shop/server-allow"}) {
		t.Fatalf("server workload %v", srv)
	}
	svc := x.For(Proxy{Kind: KindZtunnel})[configv1.ServiceTypeURL]["shop/server.shop.svc.cluster.local"].Message.(*configv1.Service)
	if svc.Waypoint.GetIdentity() != "spiffe://cluster.local/ns/shop/sa/wp" {
		t.Fatalf("service waypoint %v", svc.Waypoint)
	}
}

func TestIndexIncremental(t *testing.T) {
	x, errs := Build(Options{}, labObjects())
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	before := x.For(Proxy{Kind: KindZtunnel, Node: "node-b"})
	gen := x.Generation()

	// Re-applying the same objects changes nothing.
	for _, o := range labObjects() {
		if err := x.Upsert(o); err != nil {
			t.Fatal(err)
		}
	}
	if ch := x.Commit(); len(ch) != 0 || x.Generation() != gen {
		t.Fatalf("no-op commit changed %v", ch)
	}

	steps := []struct {
		name    string
		apply   func() error
		changes []Change
	}{
		{"pod moves IP", func() error {
			return x.Upsert(pod("shop", "client", "node-a", "10.0.1.2", map[string]string{"app": "client"}, withSA("client")))
		}, []Change{{TypeURL: configv1.WorkloadTypeURL, Name: "Kubernetes//Pod/shop/client"}}},
		{"pod deleted", func() error { return x.Delete(pod("shop", "client", "", "", nil)) },
			[]Change{{TypeURL: configv1.WorkloadTypeURL, Name: "Kubernetes//Pod/shop/client", Removed: true}}},
		{"namespace unlabelled", func() error { return x.Upsert(namespace("shop", nil)) },
			[]Change{{TypeURL: configv1.WorkloadTypeURL, Name: "Kubernetes//Pod/shop/server"}}},
		{"policy deleted", func() error {
			return x.Delete(&secv1.AuthorizationPolicy{ObjectMeta: meta("shop", "server-allow", nil)})
		},
			[]Change{{TypeURL: configv1.AuthorizationTypeURL, Name: "shop/server-allow", Removed: true}, {TypeURL: configv1.WorkloadTypeURL, Name: "Kubernetes//Pod/shop/server"}}},
		{"route deleted", func() error { return x.Delete(&gatewayv1.HTTPRoute{ObjectMeta: meta("shop", "server-route", nil)}) }, nil},
	}
	for _, s := range steps {
		if err := s.apply(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got := x.Commit()
		if !slices.Equal(got, s.changes) {
			t.Fatalf("%s: changes %v, want %v", s.name, got, s.changes)
		}
	}
	// Snapshots handed out earlier are not modified.
	if len(before[configv1.WorkloadTypeURL]) != 2 {
		t.Fatalf("old snapshot changed: %d workloads", len(before[configv1.WorkloadTypeURL]))
	}
	if wl := x.For(Proxy{Kind: KindZtunnel})[configv1.WorkloadTypeURL]["Kubernetes//Pod/shop/server"].Message.(*configv1.Workload); wl.TunnelProtocol != configv1.TunnelProtocol_NONE {
		t.Fatalf("unlabelled namespace: tunnel %v", wl.TunnelProtocol)
	}
}

func TestIndexBadObjectKeepsLastGood(t *testing.T) {
	x, errs := Build(Options{}, labObjects())
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	good := x.For(Proxy{Kind: KindZtunnel, Node: "node-b"})[configv1.AuthorizationTypeURL]["shop/server-allow"]
	bad := []struct {
		obj   runtime.Object
		kind  string
		name  string
		field string
	}{
		{&secv1.AuthorizationPolicy{ObjectMeta: meta("shop", "server-allow", nil), Spec: secv1.AuthorizationPolicySpec{
			Selector: &secv1.WorkloadSelector{MatchLabels: map[string]string{"app": "server"}},
			Rules:    []secv1.Rule{{To: []secv1.RuleTo{{Operation: secv1.Operation{Ports: []string{"eighty"}}}}}},
		}}, "AuthorizationPolicy", "server-allow", "spec.rules[0].to[0].operation.ports[0]"},
		{service("shop", "server", "10.96.0.999", nil, nil), "Service", "server", "spec.clusterIPs[0]"},
		{pod("shop", "server", "node-b", "bad", nil), "Pod", "server", "status.podIPs[0].ip"},
		{waypointGW("shop", "wp", "everything", ""), "Gateway", "wp", "metadata.labels"},
		{httpRoute("shop", "server-route", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("b", 80, ptr(int32(-5)))}}), "HTTPRoute", "server-route", "weight"},
		{&secv1.PeerAuthentication{ObjectMeta: meta("shop", "strict", nil), Spec: secv1.PeerAuthenticationSpec{MTLS: &secv1.MTLS{Mode: "MAYBE"}}}, "PeerAuthentication", "strict", "spec.mtls.mode"},
	}
	for _, b := range bad {
		err := x.Upsert(b.obj)
		wantObjErr(t, err, b.kind, "shop", b.name, b.field)
	}
	// A good object alongside the bad ones still applies.
	if err := x.Upsert(pod("shop", "new", "node-b", "10.0.2.9", nil)); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if got := len(x.Errors()); got != len(bad) {
		t.Fatalf("%d errors, want %d: %v", got, len(bad), x.Errors())
	}
	res := x.For(Proxy{Kind: KindZtunnel, Node: "node-b"})
	if got := res[configv1.AuthorizationTypeURL]["shop/server-allow"]; got.Version != good.Version {
		t.Fatalf("bad policy replaced the good one")
	}
	if _, ok := res[configv1.WorkloadTypeURL]["Kubernetes//Pod/shop/new"]; !ok {
		t.Fatalf("good pod missing")
	}
	if srv := res[configv1.WorkloadTypeURL]["Kubernetes//Pod/shop/server"].Message.(*configv1.Workload); len(srv.Addresses) != 1 || srv.Addresses[0][3] != 1 ||
		srv.PeerAuthentication != configv1.PeerAuthenticationMode_STRICT {
		t.Fatalf("server workload lost its last good state: %v", srv)
	}
	// Fixing the object clears its error.
	if err := x.Delete(&secv1.PeerAuthentication{ObjectMeta: meta("shop", "strict", nil)}); err != nil {
		t.Fatal(err)
	}
	if got := len(x.Errors()); got != len(bad)-1 {
		t.Fatalf("%d errors after delete, want %d", got, len(bad)-1)
	}
}

func TestVersionDeterministic(t *testing.T) {
	a := &configv1.Workload{Uid: "u", Labels: map[string]string{"a": "1", "b": "2", "c": "3"}}
	b := &configv1.Workload{Uid: "u", Labels: map[string]string{"c": "3", "b": "2", "a": "1"}}
	if Version(a) != Version(b) {
		t.Fatal("equal messages have different versions")
	}
	b.Labels["c"] = "4"
	if Version(a) == Version(b) {
		t.Fatal("different messages have equal versions")
	}
}

// benchObjects is the bench-controller scale: pods spread over nodes and namespaces, one
// Service per ten pods.
func benchObjects(pods, services, nodes, namespaces int) []runtime.Object {
	var objs []runtime.Object
	for n := range namespaces {
		objs = append(objs, namespace(fmt.Sprintf("ns-%d", n), map[string]string{LabelDataplaneMode: ModeAmbient}))
	}
	for s := range services {
		ns := fmt.Sprintf("ns-%d", s%namespaces)
		objs = append(objs, service(ns, fmt.Sprintf("svc-%d", s), fmt.Sprintf("10.96.%d.%d", s/250, s%250+1), nil, map[string]string{"app": fmt.Sprintf("app-%d", s)}))
	}
	for i := range pods {
		s := i % services
		ns := fmt.Sprintf("ns-%d", s%namespaces)
		objs = append(objs, pod(ns, fmt.Sprintf("pod-%d", i), fmt.Sprintf("node-%d", i%nodes),
			fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256), map[string]string{"app": fmt.Sprintf("app-%d", s)}))
	}
	for n := range namespaces {
		objs = append(objs, &secv1.AuthorizationPolicy{ObjectMeta: meta(fmt.Sprintf("ns-%d", n), "allow", nil), Spec: secv1.AuthorizationPolicySpec{
			Selector: &secv1.WorkloadSelector{MatchLabels: map[string]string{"app": "app-1"}},
		}})
	}
	return objs
}

func BenchmarkIndexBuild(b *testing.B) {
	objs := benchObjects(10000, 1000, 100, 10)
	b.ResetTimer()
	for b.Loop() {
		if _, errs := Build(Options{}, objs); len(errs) > 0 {
			b.Fatal(errs)
		}
	}
}

// BenchmarkIndexUpdate is one pod change at bench-controller scale (10,000 pods, 1,000
// services, 100 nodes): Upsert, Commit, and For for each of 100 ztunnels.
func BenchmarkIndexUpdate(b *testing.B) {
	objs := benchObjects(10000, 1000, 100, 10)
	x, errs := Build(Options{}, objs)
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	p := pod("ns-0", "pod-0", "node-0", "10.0.0.0", map[string]string{"app": "app-0"})
	i := 0
	for b.Loop() {
		i++
		p = p.DeepCopy()
		p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.200.%d.%d", (i/256)%256, i%256)}}
		if err := x.Upsert(p); err != nil {
			b.Fatal(err)
		}
		if ch := x.Commit(); len(ch) != 1 {
			b.Fatalf("changes %v", ch)
		}
		for n := range 100 {
			if len(x.For(Proxy{Kind: KindZtunnel, Node: fmt.Sprintf("node-%d", n)})[configv1.WorkloadTypeURL]) != 10000 {
				b.Fatal("workloads missing")
			}
		}
	}
}

func TestIndexSelectorShortcut(t *testing.T) {
	objs := []runtime.Object{
		service("shop", "multi", "10.96.0.1", nil, map[string]string{"tier": "be", "app": "server"}),
		service("shop", "single", "10.96.0.2", nil, map[string]string{"tier": "be"}),
		pod("shop", "both", "n", "10.0.0.1", map[string]string{"app": "server", "tier": "be"}),
		pod("shop", "app-only", "n", "10.0.0.2", map[string]string{"app": "server"}),
		pod("shop", "tier-only", "n", "10.0.0.3", map[string]string{"tier": "be", "x": "y"}),
	}
	x, errs := Build(Options{}, objs)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	wls := x.For(Proxy{Kind: KindZtunnel})[configv1.WorkloadTypeURL]
	tests := []struct {
		pod  string
		want []string
	}{
		{"both", []string{"shop/multi.shop.svc.cluster.local", "shop/single.shop.svc.cluster.local"}},
		{"app-only", nil},
		{"tier-only", []string{"shop/single.shop.svc.cluster.local"}},
	}
	for _, tt := range tests {
		w := wls["Kubernetes//Pod/shop/"+tt.pod].Message.(*configv1.Workload)
		if got := slices.Sorted(maps.Keys(w.Services)); !slices.Equal(got, tt.want) {
			t.Errorf("%s: services %v, want %v", tt.pod, got, tt.want)
		}
	}
}

// A service-account waypoint gets the RouteConfigs of the Services whose endpoints run as
// that service account: ztunnel sends it their traffic addressed to the VIP.
func TestIndexForServiceAccountWaypoint(t *testing.T) {
	objs := labObjects()
	svc := objs[4].(*corev1.Service)
	delete(svc.Labels, LabelUseWaypoint) // the Service is not bound itself
	r := objs[len(objs)-1].(*gatewayv1.HTTPRoute)
	r.Spec.ParentRefs[0].Name = "server"
	r.Spec.ParentRefs[0].Port = nil
	sa := &corev1.ServiceAccount{ObjectMeta: meta("shop", "server", map[string]string{LabelUseWaypoint: "sa-wp"})}
	objs = append(objs, sa, waypointGW("shop", "sa-wp", "serviceaccount", "10.0.3.2"))
	x, errs := Build(Options{}, objs)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	res := x.For(Proxy{ID: "sa-wp", Kind: KindWaypoint, Namespace: "shop", Name: "sa-wp"})
	if got := names(res[configv1.RouteConfigTypeURL]); !slices.Equal(got, []string{"shop/server.shop.svc.cluster.local"}) {
		t.Fatalf("service-account waypoint routes %v, want the server Service's", got)
	}
	if got := names(x.For(Proxy{ID: "wp", Kind: KindWaypoint, Namespace: "shop", Name: "wp"})[configv1.RouteConfigTypeURL]); len(got) != 0 {
		t.Fatalf("the service waypoint, bound to nothing now, got routes %v", got)
	}
}

func TestIndexWaypoints(t *testing.T) {
	objs := append(labObjects(), waypointGW("shop", "sa-wp", "serviceaccount", "10.0.3.2"),
		waypointGW("a-first", "ns-wp", "namespace", ""))
	x, errs := Build(Options{}, objs)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	var got []string
	for _, wp := range x.Waypoints() {
		got = append(got, wp.GetNamespace()+"/"+wp.GetName()+"="+wp.GetFor().String())
	}
	want := []string{"a-first/ns-wp=NAMESPACE", "shop/sa-wp=SERVICEACCOUNT", "shop/wp=SERVICE"}
	if !slices.Equal(got, want) {
		t.Fatalf("Waypoints() = %v, want %v", got, want)
	}
	if err := x.Delete(waypointGW("shop", "sa-wp", "serviceaccount", "")); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if n := len(x.Waypoints()); n != 2 {
		t.Fatalf("%d waypoints after deleting one of 3", n)
	}
}
