package configv1_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	configv1 "ambit.dev/proto/config/v1"
)

func TestTypeURLs(t *testing.T) {
	tests := []struct {
		url string
		msg proto.Message
	}{
		{configv1.WorkloadTypeURL, &configv1.Workload{}},
		{configv1.ServiceTypeURL, &configv1.Service{}},
		{configv1.AuthorizationTypeURL, &configv1.Authorization{}},
		{configv1.WaypointTypeURL, &configv1.Waypoint{}},
		{configv1.RouteConfigTypeURL, &configv1.RouteConfig{}},
	}
	if len(tests) != len(configv1.TypeURLs) {
		t.Fatalf("TypeURLs has %d entries, want %d", len(configv1.TypeURLs), len(tests))
	}
	for _, tt := range tests {
		a, err := anypb.New(tt.msg)
		if err != nil {
			t.Fatalf("anypb.New(%T): %v", tt.msg, err)
		}
		if a.GetTypeUrl() != tt.url {
			t.Errorf("%T: type URL %q, constant says %q", tt.msg, a.GetTypeUrl(), tt.url)
		}
		found := false
		for _, u := range configv1.TypeURLs {
			found = found || u == tt.url
		}
		if !found {
			t.Errorf("TypeURLs lacks %q", tt.url)
		}
	}
}

// TestEnumZeroValues pins the meaning of each enum's zero value: it is what a proxy sees when
// the controller leaves a field unset, so changing it changes behaviour silently.
func TestEnumZeroValues(t *testing.T) {
	tests := []struct {
		got  protoreflect.Enum
		want string
	}{
		{configv1.TunnelProtocol(0), "NONE"},
		{configv1.NetworkMode(0), "STANDARD"},
		{configv1.WorkloadStatus(0), "HEALTHY"},
		{configv1.PeerAuthenticationMode(0), "UNSET"},
		{configv1.AppProtocol(0), "TCP"},
		{configv1.LoadBalancing_Mode(0), "DEFAULT"},
		{configv1.Authorization_Scope(0), "WORKLOAD_SELECTOR"},
		{configv1.Authorization_Action(0), "ALLOW"},
		{configv1.Waypoint_For(0), "SERVICEACCOUNT"},
	}
	for _, tt := range tests {
		d := tt.got.Descriptor()
		if name := string(d.Values().ByNumber(0).Name()); name != tt.want {
			t.Errorf("%s: zero value %s, want %s", d.FullName(), name, tt.want)
		}
	}
}

// TestRoundTrip checks that a fully populated resource of each type survives the wire
// unchanged inside an Any, as it travels in a DeltaDiscoveryResponse.
func TestRoundTrip(t *testing.T) {
	waypoint := &configv1.GatewayAddress{
		Address:   &configv1.NetworkAddress{Address: []byte{10, 0, 0, 9}},
		HbonePort: 15008,
		Identity:  "spiffe://cluster.local/ns/shop/sa/shop-waypoint",
	}
	msgs := []proto.Message{
		&configv1.Workload{
			Uid:                   "Kubernetes//Pod/shop/web-0",
			Name:                  "web-0",
			Namespace:             "shop",
			Node:                  "node-a",
			Addresses:             [][]byte{{10, 0, 1, 5}, make([]byte, 16)},
			ServiceAccount:        "web",
			TrustDomain:           "cluster.local",
			WorkloadName:          "web",
			CanonicalService:      "web",
			CanonicalRevision:     "v1",
			Labels:                map[string]string{"app": "web"},
			Services:              map[string]*configv1.PortList{"shop/web.shop.svc.cluster.local": {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: configv1.AppProtocol_HTTP}}}},
			Waypoint:              waypoint,
			TunnelProtocol:        configv1.TunnelProtocol_HBONE,
			Status:                configv1.WorkloadStatus_HEALTHY,
			AuthorizationPolicies: []string{"shop/allow-frontend"},
			PeerAuthentication:    configv1.PeerAuthenticationMode_STRICT,
		},
		&configv1.Service{
			Name:            "web",
			Namespace:       "shop",
			Hostname:        "web.shop.svc.cluster.local",
			Addresses:       []*configv1.NetworkAddress{{Address: []byte{10, 96, 0, 10}}},
			Ports:           []*configv1.Port{{ServicePort: 80, TargetPort: 8080}},
			Waypoint:        waypoint,
			LoadBalancing:   &configv1.LoadBalancing{Mode: configv1.LoadBalancing_P2C},
			SubjectAltNames: []string{"spiffe://cluster.local/ns/shop/sa/web"},
		},
		&configv1.Authorization{
			Name:       "allow-frontend",
			Namespace:  "shop",
			Scope:      configv1.Authorization_WORKLOAD_SELECTOR,
			Selector:   map[string]string{"app": "web"},
			TargetRefs: []*configv1.TargetRef{{Kind: "Service", Name: "web"}},
			Action:     configv1.Authorization_ALLOW,
			Rules: []*configv1.Rule{{
				From: []*configv1.Source{{
					Principals:  []string{"cluster.local/ns/shop/sa/frontend"},
					Namespaces:  []string{"shop"},
					NotIpBlocks: []*configv1.IPBlock{{Address: []byte{192, 0, 2, 0}, Length: 24}},
				}},
				To: []*configv1.Operation{{Ports: []uint32{8080}, Methods: []string{"GET"}, Paths: []string{"/api/*"}}},
			}},
		},
		&configv1.Waypoint{
			Name:      "shop-waypoint",
			Namespace: "shop",
			For:       configv1.Waypoint_SERVICE,
			Address:   &configv1.NetworkAddress{Address: []byte{10, 0, 0, 9}},
			HbonePort: 15008,
			Identity:  "spiffe://cluster.local/ns/shop/sa/shop-waypoint",
		},
		&configv1.RouteConfig{
			Hostname:  "web.shop.svc.cluster.local",
			Namespace: "shop",
			Routes: []*configv1.Route{{
				Name:  "shop/web/0",
				Ports: []uint32{80},
				Matches: []*configv1.RouteMatch{{
					Path:    &configv1.PathMatch{Kind: &configv1.PathMatch_Prefix{Prefix: "/api"}},
					Headers: []*configv1.HeaderMatch{{Name: "x-canary", Value: "1"}},
					Method:  "GET",
				}},
				Backends: []*configv1.Backend{
					{Hostname: "web-v1.shop.svc.cluster.local", Port: 80, Weight: 90},
					{Hostname: "web-v2.shop.svc.cluster.local", Port: 80, Weight: 10},
				},
				Timeouts: &configv1.Timeouts{Request: durationpb.New(5 * time.Second), BackendRequest: durationpb.New(time.Second)},
				Retry:    &configv1.Retry{Codes: []uint32{503}, Attempts: 2, Backoff: durationpb.New(25 * time.Millisecond)},
				Fault: &configv1.Fault{
					Abort: &configv1.Fault_Abort{Percentage: 1.5, Status: 503},
					Delay: &configv1.Fault_Delay{Percentage: 10, Delay: durationpb.New(100 * time.Millisecond)},
				},
			}},
		},
	}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatalf("anypb.New(%T): %v", m, err)
		}
		b, err := proto.Marshal(a)
		if err != nil {
			t.Fatalf("marshal %T: %v", m, err)
		}
		var back anypb.Any
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal %T: %v", m, err)
		}
		got, err := back.UnmarshalNew()
		if err != nil {
			t.Fatalf("UnmarshalNew %T: %v", m, err)
		}
		if !proto.Equal(got, m) {
			t.Errorf("%T changed on the wire:\n got %v\nwant %v", m, got, m)
		}
	}
}
