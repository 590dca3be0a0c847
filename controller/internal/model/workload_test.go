package model

import (
	"net/netip"
	"slices"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestEnrolled(t *testing.T) {
	amb := map[string]string{LabelDataplaneMode: ModeAmbient}
	none := map[string]string{LabelDataplaneMode: ModeNone}
	tests := []struct {
		name      string
		ns        *corev1.Namespace
		podLabels map[string]string
		want      bool
	}{
		{"namespace enrolled", namespace("a", amb), nil, true},
		{"namespace not enrolled", namespace("a", nil), nil, false},
		{"namespace unknown", nil, nil, false},
		{"pod opts out", namespace("a", amb), none, false},
		{"pod opts in", namespace("a", nil), amb, true},
		{"pod opts in, namespace unknown", nil, amb, true},
		{"namespace other value", namespace("a", map[string]string{LabelDataplaneMode: "sidecar"}), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Enrolled(tt.ns, pod("a", "p", "n", "10.0.0.1", tt.podLabels)); got != tt.want {
				t.Fatalf("Enrolled = %v, want %v", got, tt.want)
			}
		})
	}
}

func addr(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestBuildWorkload(t *testing.T) {
	opts := Options{}.WithDefaults()
	amb := map[string]string{LabelDataplaneMode: ModeAmbient}
	nsAmb := namespace("shop", amb)
	wpSA := &configv1.Waypoint{Name: "wp", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/wp",
		Address: &configv1.NetworkAddress{Address: addr("10.9.0.1")}}
	wpSvc := &configv1.Waypoint{Name: "svc-wp", Namespace: "shop", For: configv1.Waypoint_SERVICE, Identity: "spiffe://cluster.local/ns/shop/sa/svc-wp"}
	wps := map[string]*configv1.Waypoint{"wp": wpSA, "svc-wp": wpSvc}
	ga := &configv1.GatewayAddress{Identity: wpSA.Identity, Address: &configv1.NetworkAddress{Address: addr("10.9.0.1")}}
	tests := []struct {
		name  string
		pod   *corev1.Pod
		in    WorkloadInputs
		check func(t *testing.T, w *configv1.Workload)
	}{
		{
			name: "pending pod is skipped",
			pod: func() *corev1.Pod {
				p := pod("shop", "p", "n1", "10.0.0.1", nil)
				p.Status.Phase = corev1.PodPending
				return p
			}(),
			check: func(t *testing.T, w *configv1.Workload) {
				if w != nil {
					t.Fatalf("got %v, want nil", w)
				}
			},
		},
		{
			name: "running pod without ip is skipped",
			pod: func() *corev1.Pod {
				p := pod("shop", "p", "n1", "", nil)
				p.Status.PodIPs = nil
				return p
			}(),
			check: func(t *testing.T, w *configv1.Workload) {
				if w != nil {
					t.Fatalf("got %v, want nil", w)
				}
			},
		},
		{
			name: "enrolled pod: identity, canonical names, HBONE",
			pod: func() *corev1.Pod {
				p := pod("shop", "web-7d9f-abcde", "n1", "10.0.0.1", map[string]string{"app": "web", "version": "v2", "pod-template-hash": "7d9f"}, withSA("web"))
				p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-7d9f", Controller: ptr(true)}}
				return p
			}(),
			in: WorkloadInputs{Namespace: nsAmb},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.Uid != "Kubernetes//Pod/shop/web-7d9f-abcde" || w.Node != "n1" || w.ServiceAccount != "web" || w.TrustDomain != "cluster.local" {
					t.Fatalf("identity fields wrong: %v", w)
				}
				if w.WorkloadName != "web" || w.CanonicalService != "web" || w.CanonicalRevision != "v2" {
					t.Fatalf("names: workload %q canonical %q/%q", w.WorkloadName, w.CanonicalService, w.CanonicalRevision)
				}
				if w.TunnelProtocol != configv1.TunnelProtocol_HBONE || w.Status != configv1.WorkloadStatus_HEALTHY {
					t.Fatalf("tunnel %v status %v", w.TunnelProtocol, w.Status)
				}
			},
		},
		{
			name: "app.kubernetes.io labels win over app/version; defaults latest",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{"app.kubernetes.io/name": "shopfront", "app": "x"}),
			check: func(t *testing.T, w *configv1.Workload) {
				if w.CanonicalService != "shopfront" || w.CanonicalRevision != "latest" || w.WorkloadName != "p" {
					t.Fatalf("got %q %q %q", w.CanonicalService, w.CanonicalRevision, w.WorkloadName)
				}
			},
		},
		{
			name: "not enrolled pod: NONE, no waypoint",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{LabelUseWaypoint: "wp"}),
			in:   WorkloadInputs{Namespace: namespace("shop", nil), Waypoints: wps},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.TunnelProtocol != configv1.TunnelProtocol_NONE || w.Waypoint != nil {
					t.Fatalf("tunnel %v waypoint %v", w.TunnelProtocol, w.Waypoint)
				}
			},
		},
		{
			name: "pod opt-out in enrolled namespace",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{LabelDataplaneMode: "none"}),
			in:   WorkloadInputs{Namespace: nsAmb},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.TunnelProtocol != configv1.TunnelProtocol_NONE {
					t.Fatalf("tunnel %v", w.TunnelProtocol)
				}
			},
		},
		{
			name: "dual stack, IPv4 first; not ready is UNHEALTHY",
			pod: func() *corev1.Pod {
				p := pod("shop", "p", "n1", "fd00::1", nil)
				p.Status.PodIPs = []corev1.PodIP{{IP: "fd00::1"}, {IP: "10.0.0.1"}}
				p.Status.Conditions = nil
				return p
			}(),
			check: func(t *testing.T, w *configv1.Workload) {
				if len(w.Addresses) != 2 || len(w.Addresses[0]) != 4 || len(w.Addresses[1]) != 16 {
					t.Fatalf("addresses %v", w.Addresses)
				}
				if w.Status != configv1.WorkloadStatus_UNHEALTHY {
					t.Fatalf("status %v", w.Status)
				}
			},
		},
		{
			name: "services by selector; named target port resolved; unknown named port skipped",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{"app": "web"}),
			in: WorkloadInputs{Services: []*corev1.Service{
				service("shop", "web", "10.96.0.1", nil, map[string]string{"app": "web"},
					corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
					corev1.ServicePort{Name: "grpc-x", Port: 90, TargetPort: intstr.FromString("nope")},
					corev1.ServicePort{Name: "tcp", Port: 5000, TargetPort: intstr.FromInt32(5001)},
					corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}),
				service("shop", "other", "10.96.0.2", nil, map[string]string{"app": "other"}),
				service("shop", "noselector", "10.96.0.3", nil, nil),
			}},
			check: func(t *testing.T, w *configv1.Workload) {
				if len(w.Services) != 1 {
					t.Fatalf("services %v", w.Services)
				}
				pl := w.Services["shop/web.shop.svc.cluster.local"]
				if len(pl.GetPorts()) != 2 {
					t.Fatalf("ports %v", pl)
				}
				if p := pl.Ports[0]; p.ServicePort != 80 || p.TargetPort != 8080 || p.AppProtocol != configv1.AppProtocol_HTTP {
					t.Fatalf("port 0 %v", p)
				}
				if p := pl.Ports[1]; p.ServicePort != 5000 || p.TargetPort != 5001 {
					t.Fatalf("port 1 %v", p)
				}
			},
		},
		{
			name: "waypoint from namespace",
			pod:  pod("shop", "p", "n1", "10.0.0.1", nil),
			in:   WorkloadInputs{Namespace: namespace("shop", map[string]string{LabelDataplaneMode: ModeAmbient, LabelUseWaypoint: "wp"}), Waypoints: wps},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.Waypoint.GetIdentity() != ga.Identity || !slices.Equal(w.Waypoint.GetAddress().GetAddress(), ga.Address.Address) {
					t.Fatalf("waypoint %v", w.Waypoint)
				}
			},
		},
		{
			name: "service account none overrides namespace",
			pod:  pod("shop", "p", "n1", "10.0.0.1", nil, withSA("web")),
			in: WorkloadInputs{
				Namespace:      namespace("shop", map[string]string{LabelDataplaneMode: ModeAmbient, LabelUseWaypoint: "wp"}),
				ServiceAccount: &corev1.ServiceAccount{ObjectMeta: meta("shop", "web", map[string]string{LabelUseWaypoint: "none"})},
				Waypoints:      wps,
			},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.Waypoint != nil {
					t.Fatalf("waypoint %v, want none", w.Waypoint)
				}
			},
		},
		{
			name: "pod label overrides service account",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{LabelUseWaypoint: "wp"}, withSA("web")),
			in: WorkloadInputs{
				Namespace:      nsAmb,
				ServiceAccount: &corev1.ServiceAccount{ObjectMeta: meta("shop", "web", map[string]string{LabelUseWaypoint: "other"})},
				Waypoints:      wps,
			},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.Waypoint.GetIdentity() != wpSA.Identity {
					t.Fatalf("waypoint %v", w.Waypoint)
				}
			},
		},
		{
			name: "service-only waypoint does not bind workloads",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{LabelUseWaypoint: "svc-wp"}),
			in:   WorkloadInputs{Namespace: nsAmb, Waypoints: wps},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.Waypoint != nil {
					t.Fatalf("waypoint %v", w.Waypoint)
				}
			},
		},
		{
			name: "missing waypoint binds with no address (fails closed)",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{LabelUseWaypoint: "later"}),
			in:   WorkloadInputs{Namespace: nsAmb, Waypoints: wps},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.Waypoint.GetIdentity() != "spiffe://cluster.local/ns/shop/sa/later" || w.Waypoint.Address != nil {
					t.Fatalf("waypoint %v", w.Waypoint)
				}
			},
		},
		{
			name: "selector policies of own and root namespace; peer auth selector beats namespace",
			pod:  pod("shop", "p", "n1", "10.0.0.1", map[string]string{"app": "web"}),
			in: WorkloadInputs{
				Policies: []*configv1.Authorization{
					{Name: "b", Namespace: "shop", Selector: map[string]string{"app": "web"}},
					{Name: "a", Namespace: "ambit-system", Selector: map[string]string{"app": "web"}},
					{Name: "c", Namespace: "shop", Selector: map[string]string{"app": "db"}},
					{Name: "d", Namespace: "other", Selector: map[string]string{"app": "web"}},
					{Name: "e", Namespace: "shop", Scope: configv1.Authorization_NAMESPACE},
				},
				PeerAuths: []PeerAuth{
					{Namespace: "ambit-system", Name: "mesh", Mode: configv1.PeerAuthenticationMode_PERMISSIVE},
					{Namespace: "shop", Name: "ns", Mode: configv1.PeerAuthenticationMode_PERMISSIVE},
					{Namespace: "shop", Name: "web", Selector: map[string]string{"app": "web"}, Mode: configv1.PeerAuthenticationMode_STRICT},
				},
			},
			check: func(t *testing.T, w *configv1.Workload) {
				if want := []string{"ambit-system/a", "shop/b"}; !slices.Equal(w.AuthorizationPolicies, want) {
					t.Fatalf("policies %v, want %v", w.AuthorizationPolicies, want)
				}
				if w.PeerAuthentication != configv1.PeerAuthenticationMode_STRICT {
					t.Fatalf("peer auth %v", w.PeerAuthentication)
				}
			},
		},
		{
			name: "mesh-wide peer authentication applies when nothing closer does",
			pod:  pod("shop", "p", "n1", "10.0.0.1", nil),
			in: WorkloadInputs{PeerAuths: []PeerAuth{
				{Namespace: "ambit-system", Name: "mesh", Mode: configv1.PeerAuthenticationMode_STRICT},
				{Namespace: "shop", Name: "other", Selector: map[string]string{"app": "db"}, Mode: configv1.PeerAuthenticationMode_PERMISSIVE},
			}},
			check: func(t *testing.T, w *configv1.Workload) {
				if w.PeerAuthentication != configv1.PeerAuthenticationMode_STRICT {
					t.Fatalf("peer auth %v", w.PeerAuthentication)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.Options = opts
			w, err := BuildWorkload(tt.pod, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, w)
		})
	}
}

func TestBuildWorkloadBadIP(t *testing.T) {
	p := pod("shop", "p", "n1", "10.0.0.1", nil)
	p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "10.0.0.300"})
	_, err := BuildWorkload(p, WorkloadInputs{Options: Options{}.WithDefaults()})
	wantObjErr(t, err, "Pod", "shop", "p", "status.podIPs[1].ip")
}

func TestServiceWaypoint(t *testing.T) {
	wps := map[string]*configv1.Waypoint{
		"svc-wp": {Name: "svc-wp", Namespace: "shop", For: configv1.Waypoint_SERVICE, Identity: "id-svc"},
		"ns-wp":  {Name: "ns-wp", Namespace: "shop", For: configv1.Waypoint_NAMESPACE, Identity: "id-ns"},
		"sa-wp":  {Name: "sa-wp", Namespace: "shop", Identity: "id-sa"},
	}
	tests := []struct {
		name      string
		svcLabels map[string]string
		nsLabels  map[string]string
		want      string
	}{
		{"none", nil, nil, ""},
		{"namespace", nil, map[string]string{LabelUseWaypoint: "ns-wp"}, "id-ns"},
		{"service overrides namespace", map[string]string{LabelUseWaypoint: "svc-wp"}, map[string]string{LabelUseWaypoint: "ns-wp"}, "id-svc"},
		{"service none cancels namespace", map[string]string{LabelUseWaypoint: "none"}, map[string]string{LabelUseWaypoint: "ns-wp"}, ""},
		{"serviceaccount waypoint does not serve services", map[string]string{LabelUseWaypoint: "sa-wp"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ServiceWaypoint(service("shop", "web", "10.96.0.1", tt.svcLabels, nil), namespace("shop", tt.nsLabels), wps, "cluster.local")
			if got.GetIdentity() != tt.want {
				t.Fatalf("waypoint %v, want identity %q", got, tt.want)
			}
		})
	}
}
