package model

import (
	"slices"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
)

func TestConvertService(t *testing.T) {
	svc := service("shop", "web", "10.96.0.1", nil, map[string]string{"app": "web"},
		corev1.ServicePort{Name: "http-web", Port: 80, TargetPort: intstr.FromInt32(8080)},
		corev1.ServicePort{Name: "x", Port: 81, AppProtocol: ptr("kubernetes.io/h2c")},
		corev1.ServicePort{Name: "grpc", Port: 82, TargetPort: intstr.FromString("grpc")},
		corev1.ServicePort{Name: "db", Port: 5432})
	svc.Spec.ClusterIPs = []string{"10.96.0.1", "fd00::10"}
	got, err := ConvertService(svc, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	want := &configv1.Service{
		Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
		Addresses: []*configv1.NetworkAddress{{Address: addr("10.96.0.1")}, {Address: addr("fd00::10")}},
		Ports: []*configv1.Port{
			{ServicePort: 80, TargetPort: 8080, AppProtocol: configv1.AppProtocol_HTTP},
			{ServicePort: 81, AppProtocol: configv1.AppProtocol_HTTP2},
			{ServicePort: 82, AppProtocol: configv1.AppProtocol_GRPC},
			{ServicePort: 5432},
		},
	}
	if !proto.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}

	headless := service("shop", "db", "None", nil, nil)
	if got, err := ConvertService(headless, "cluster.local"); err != nil || len(got.Addresses) != 0 {
		t.Fatalf("headless: %v, %v", got, err)
	}
	bad := service("shop", "web", "10.96.0.1", nil, nil)
	bad.Spec.ClusterIPs = []string{"10.96.0.1", "not-an-ip"}
	_, err = ConvertService(bad, "cluster.local")
	wantObjErr(t, err, "Service", "shop", "web", "spec.clusterIPs[1]")
}

func TestConvertGateway(t *testing.T) {
	tests := []struct {
		name    string
		gw      *gatewayv1.Gateway
		ok      bool
		want    *configv1.Waypoint
		errPath string
	}{
		{
			name: "other class is ignored",
			gw: func() *gatewayv1.Gateway {
				g := waypointGW("shop", "gw", "", "")
				g.Spec.GatewayClassName = "istio"
				return g
			}(),
		},
		{
			name: "default serviceaccount, status address",
			gw:   waypointGW("shop", "wp", "", "10.9.0.1"),
			ok:   true,
			want: &configv1.Waypoint{Name: "wp", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/wp",
				Address: &configv1.NetworkAddress{Address: addr("10.9.0.1")}},
		},
		{
			name: "service waypoint, spec address, custom port",
			gw: func() *gatewayv1.Gateway {
				g := waypointGW("shop", "wp", "service", "")
				g.Spec.Addresses = []gatewayv1.GatewaySpecAddress{{Value: "10.9.0.2"}}
				g.Spec.Listeners[0].Port = 15009
				return g
			}(),
			ok: true,
			want: &configv1.Waypoint{Name: "wp", Namespace: "shop", For: configv1.Waypoint_SERVICE, Identity: "spiffe://cluster.local/ns/shop/sa/wp",
				Address: &configv1.NetworkAddress{Address: addr("10.9.0.2")}, HbonePort: 15009},
		},
		{name: "namespace waypoint", gw: waypointGW("shop", "wp", "namespace", ""), ok: true,
			want: &configv1.Waypoint{Name: "wp", Namespace: "shop", For: configv1.Waypoint_NAMESPACE, Identity: "spiffe://cluster.local/ns/shop/sa/wp"}},
		{name: "bad for label", gw: waypointGW("shop", "wp", "workload", ""), ok: true, errPath: "metadata.labels[ambit.dev/waypoint-for]"},
		{name: "bad status address", gw: waypointGW("shop", "wp", "", "10.9.0"), ok: true, errPath: "status.addresses[0].value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := ConvertGateway(tt.gw, "cluster.local")
			if tt.errPath != "" {
				wantObjErr(t, err, "Gateway", "shop", tt.gw.Name, tt.errPath)
				return
			}
			if err != nil || ok != tt.ok {
				t.Fatalf("ok %v err %v, want ok %v", ok, err, tt.ok)
			}
			if tt.want != nil && !proto.Equal(got, tt.want) {
				t.Fatalf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestPeerAuthMode(t *testing.T) {
	tests := []struct {
		mtls *secv1.MTLS
		want configv1.PeerAuthenticationMode
		bad  bool
	}{
		{nil, configv1.PeerAuthenticationMode_UNSET, false},
		{&secv1.MTLS{}, configv1.PeerAuthenticationMode_UNSET, false},
		{&secv1.MTLS{Mode: "STRICT"}, configv1.PeerAuthenticationMode_STRICT, false},
		{&secv1.MTLS{Mode: "PERMISSIVE"}, configv1.PeerAuthenticationMode_PERMISSIVE, false},
		{&secv1.MTLS{Mode: "strict"}, 0, true},
	}
	for _, tt := range tests {
		pa := &secv1.PeerAuthentication{ObjectMeta: meta("shop", "pa", nil), Spec: secv1.PeerAuthenticationSpec{MTLS: tt.mtls}}
		got, err := PeerAuthMode(pa)
		if tt.bad {
			wantObjErr(t, err, "PeerAuthentication", "shop", "pa", "spec.mtls.mode")
			continue
		}
		if err != nil || got != tt.want {
			t.Fatalf("%v: got %v, %v; want %v", tt.mtls, got, err, tt.want)
		}
	}
}

func TestConvertAuthorizationPolicy(t *testing.T) {
	ap := func(ns string, spec secv1.AuthorizationPolicySpec) *secv1.AuthorizationPolicy {
		return &secv1.AuthorizationPolicy{ObjectMeta: meta(ns, "p", nil), Spec: spec}
	}
	full := secv1.AuthorizationPolicySpec{
		Selector: &secv1.WorkloadSelector{MatchLabels: map[string]string{"app": "server"}},
		Action:   "DENY",
		Rules: []secv1.Rule{{
			From: []secv1.RuleFrom{{Source: secv1.Source{
				Principals: []string{"cluster.local/ns/shop/sa/client"}, NotPrincipals: []string{"*/sa/bad"},
				Namespaces: []string{"shop"}, NotNamespaces: []string{"evil"},
				IPBlocks: []string{"10.0.0.0/8", "10.1.2.3", "fd00::/8"}, NotIPBlocks: []string{"::ffff:10.1.0.0/112"},
			}}},
			To: []secv1.RuleTo{{Operation: secv1.Operation{
				Ports: []string{"8080"}, NotPorts: []string{"22"}, Methods: []string{"GET"}, Paths: []string{"/api/*"},
			}}},
		}},
	}
	want := &configv1.Authorization{
		Name: "p", Namespace: "shop", Scope: configv1.Authorization_WORKLOAD_SELECTOR,
		Selector: map[string]string{"app": "server"}, Action: configv1.Authorization_DENY,
		Rules: []*configv1.Rule{{
			From: []*configv1.Source{{
				Principals: []string{"cluster.local/ns/shop/sa/client"}, NotPrincipals: []string{"*/sa/bad"},
				Namespaces: []string{"shop"}, NotNamespaces: []string{"evil"},
				IpBlocks: []*configv1.IPBlock{
					{Address: addr("10.0.0.0"), Length: 8}, {Address: addr("10.1.2.3"), Length: 32}, {Address: addr("fd00::"), Length: 8},
				},
				NotIpBlocks: []*configv1.IPBlock{{Address: addr("10.1.0.0"), Length: 16}},
			}},
			To: []*configv1.Operation{{Ports: []uint32{8080}, NotPorts: []uint32{22}, Methods: []string{"GET"}, Paths: []string{"/api/*"}}},
		}},
	}
	got, err := ConvertAuthorizationPolicy(ap("shop", full), "ambit-system")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}

	scopes := []struct {
		name string
		ns   string
		spec secv1.AuthorizationPolicySpec
		want configv1.Authorization_Scope
	}{
		{"namespace", "shop", secv1.AuthorizationPolicySpec{}, configv1.Authorization_NAMESPACE},
		{"empty selector is namespace", "shop", secv1.AuthorizationPolicySpec{Selector: &secv1.WorkloadSelector{}}, configv1.Authorization_NAMESPACE},
		{"global", "ambit-system", secv1.AuthorizationPolicySpec{}, configv1.Authorization_GLOBAL},
		{"targetRefs", "shop", secv1.AuthorizationPolicySpec{TargetRefs: []secv1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "wp"}}}, configv1.Authorization_WORKLOAD_SELECTOR},
	}
	for _, tt := range scopes {
		t.Run("scope "+tt.name, func(t *testing.T) {
			got, err := ConvertAuthorizationPolicy(ap(tt.ns, tt.spec), "ambit-system")
			if err != nil || got.Scope != tt.want {
				t.Fatalf("scope %v err %v, want %v", got.GetScope(), err, tt.want)
			}
		})
	}

	rule := func(s secv1.Source, o secv1.Operation) []secv1.Rule {
		return []secv1.Rule{{From: []secv1.RuleFrom{{Source: s}}, To: []secv1.RuleTo{{Operation: o}}}}
	}
	bad := []struct {
		name  string
		spec  secv1.AuthorizationPolicySpec
		field string
	}{
		{"bad ip block", secv1.AuthorizationPolicySpec{Rules: rule(secv1.Source{IPBlocks: []string{"10.0.0.0/8", "10.0.0.0/33"}}, secv1.Operation{})}, "spec.rules[0].from[0].source.ipBlocks[1]"},
		{"bad not ip block", secv1.AuthorizationPolicySpec{Rules: rule(secv1.Source{NotIPBlocks: []string{"banana"}}, secv1.Operation{})}, "spec.rules[0].from[0].source.notIpBlocks[0]"},
		{"bad port", secv1.AuthorizationPolicySpec{Rules: rule(secv1.Source{}, secv1.Operation{Ports: []string{"http"}})}, "spec.rules[0].to[0].operation.ports[0]"},
		{"port out of range", secv1.AuthorizationPolicySpec{Rules: rule(secv1.Source{}, secv1.Operation{NotPorts: []string{"1", "70000"}})}, "spec.rules[0].to[0].operation.notPorts[1]"},
		{"port zero", secv1.AuthorizationPolicySpec{Rules: rule(secv1.Source{}, secv1.Operation{Ports: []string{"0"}})}, "spec.rules[0].to[0].operation.ports[0]"},
		{"bad action", secv1.AuthorizationPolicySpec{Action: "AUDIT"}, "spec.action"},
		{"selector and targetRefs", secv1.AuthorizationPolicySpec{
			Selector:   &secv1.WorkloadSelector{MatchLabels: map[string]string{"a": "b"}},
			TargetRefs: []secv1.PolicyTargetReference{{Kind: "Service", Name: "x"}},
		}, "spec.targetRefs"},
		{"bad target kind", secv1.AuthorizationPolicySpec{TargetRefs: []secv1.PolicyTargetReference{{Kind: "Pod", Name: "x"}}}, "spec.targetRefs[0].kind"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ConvertAuthorizationPolicy(ap("shop", tt.spec), "ambit-system")
			wantObjErr(t, err, "AuthorizationPolicy", "shop", "p", tt.field)
		})
	}
}

func TestIPBlocksShape(t *testing.T) {
	got, err := ipBlocks([]string{"192.168.1.7/24", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Address) != 4 || got[0].Length != 24 || len(got[1].Address) != 16 || got[1].Length != 128 {
		t.Fatalf("got %v", got)
	}
	if !slices.Equal(got[0].Address, addr("192.168.1.7")) {
		t.Fatalf("address %v", got[0].Address)
	}
}
