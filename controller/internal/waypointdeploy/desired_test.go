package waypointdeploy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"ambit.dev/controller/internal/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func testSettings(t *testing.T) Settings {
	return Settings{Template: defaultTemplate(t), Image: "ambit/waypoint:dev", Controller: "ambit-controller.ambit-system.svc:15012",
		TrustDomain: "cluster.local", RootCert: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")}
}

func testGateway() *gatewayv1.Gateway {
	gw := model.WaypointGateway("shop", "wp", "serviceaccount", "")
	gw.UID, gw.Generation = "uid-1", 3
	return gw
}

func TestDesired(t *testing.T) {
	s := testSettings(t)
	gw := testGateway()
	objs, err := Desired(gw, s)
	if err != nil {
		t.Fatal(err)
	}
	hashes := map[string]string{}
	for _, o := range objs.All() {
		if o.GetNamespace() != "shop" || o.GetLabels()[LabelGatewayName] != "wp" || o.GetLabels()[LabelGatewayClass] != model.WaypointClass {
			t.Errorf("%s: namespace %q, labels %v", o.GetKind(), o.GetNamespace(), o.GetLabels())
		}
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != "uid-1" || refs[0].Kind != "Gateway" || refs[0].APIVersion != "gateway.networking.k8s.io/v1" ||
			refs[0].Controller == nil || !*refs[0].Controller || !controlledBy(o, "wp") {
			t.Errorf("%s: ownerReferences %+v, want the Gateway as controller", o.GetKind(), refs)
		}
		hashes[o.GetKind()] = o.GetAnnotations()[AnnotationAppliedHash]
	}
	port, _, _ := unstructured.NestedSlice(objs.Service.Object, "spec", "ports")
	if p := port[0].(map[string]any); p["port"] != int64(15008) || p["appProtocol"] != "HBONE" || p["name"] != "mesh" {
		t.Errorf("Service's first port %v, want mesh 15008 HBONE", p)
	}

	// The same inputs hash the same; a new image changes the Deployment only; a new listener
	// port the Service only; a new Gateway uid (deleted and created again) every object.
	again, _ := Desired(gw, s)
	s2 := s
	s2.Image = "ambit/waypoint:v2"
	image, _ := Desired(gw, s2)
	gw2 := testGateway()
	gw2.Spec.Listeners[0].Port = 15009
	port2, _ := Desired(gw2, s)
	gw3 := testGateway()
	gw3.UID = "uid-2"
	uid, _ := Desired(gw3, s)
	gw4 := testGateway()
	gw4.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{
		Labels:      map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "payments", LabelGatewayName: "not-mine"},
		Annotations: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{"lab.ambit.dev/node": "node-b"},
	}
	infra, _ := Desired(gw4, s)
	for _, o := range infra.All() {
		if o.GetLabels()["team"] != "payments" || o.GetLabels()[LabelGatewayName] != "wp" || o.GetAnnotations()["lab.ambit.dev/node"] != "node-b" {
			t.Errorf("%s with spec.infrastructure: labels %v, annotations %v", o.GetKind(), o.GetLabels(), o.GetAnnotations())
		}
	}
	for _, tc := range []struct {
		name    string
		objs    Objects
		changed []string
	}{
		{"same", again, nil},
		{"image", image, []string{"Deployment"}},
		{"listener port", port2, []string{"Service"}},
		{"uid", uid, []string{"ServiceAccount", "Deployment", "Service"}},
		{"infrastructure", infra, []string{"ServiceAccount", "Deployment", "Service"}},
	} {
		for _, o := range tc.objs.All() {
			want := strings.Contains(strings.Join(tc.changed, " "), o.GetKind())
			if got := o.GetAnnotations()[AnnotationAppliedHash] != hashes[o.GetKind()]; got != want {
				t.Errorf("%s: %s hash changed = %v, want %v", tc.name, o.GetKind(), got, want)
			}
		}
	}
}

// A Gateway that cannot be deployed gets one error naming it and the field.
func TestDesiredInvalidGateway(t *testing.T) {
	s := testSettings(t)
	badLabel := testGateway()
	badLabel.Labels[model.LabelWaypointFor] = "pods"
	longName := testGateway()
	longName.Name = strings.Repeat("w", 64)
	dotted := testGateway()
	dotted.Name = "wp.v2"
	badAddr := testGateway()
	badAddr.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Value: "10.0.0.300"}}
	for _, tc := range []struct {
		name  string
		gw    *gatewayv1.Gateway
		field string
	}{
		{"waypoint-for label", badLabel, "metadata.labels[ambit.dev/waypoint-for]"},
		{"name too long for a Service", longName, "metadata.name"},
		{"name with a dot", dotted, "metadata.name"},
		{"status address", badAddr, "status.addresses[0].value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Desired(tc.gw, s)
			var oe *model.ObjectError
			if !errors.As(err, &oe) || oe.Kind != "Gateway" || oe.Namespace != "shop" || oe.Name != tc.gw.Name || oe.Field != tc.field {
				t.Fatalf("error %v, want an ObjectError for Gateway shop/%s field %s", err, tc.gw.Name, tc.field)
			}
		})
	}
}

func TestGatewayStatus(t *testing.T) {
	gw := testGateway()
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	svc := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "wp", "namespace": "shop"},
		"spec": map[string]any{"clusterIP": "10.96.0.7", "clusterIPs": []any{"10.96.0.7"}}}}
	noIP := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "wp", "namespace": "shop"}}}
	deploy := func(avail int64) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "wp", "namespace": "shop"},
			"status": map[string]any{"availableReplicas": avail}}}
	}
	tests := []struct {
		name                         string
		o                            outcome
		accepted, programmed, reason string
		addrs                        int
	}{
		{"invalid", outcome{invalid: errors.New("bad label")}, "False", "False", "Invalid", 0},
		{"conflict", outcome{conflict: errors.New("ServiceAccount shop/wp exists")}, "True", "False", ReasonConflict, 0},
		{"no cluster ip", outcome{service: noIP, deployment: deploy(1)}, "True", "False", "AddressNotAssigned", 0},
		{"no replica", outcome{service: svc, deployment: deploy(0)}, "True", "False", "Pending", 1},
		{"programmed", outcome{service: svc, deployment: deploy(2)}, "True", "True", "Programmed", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conds, addrs := gatewayStatus(gw, tc.o, t0)
			if len(conds) != 2 || string(conds[0].Status) != tc.accepted || string(conds[1].Status) != tc.programmed || conds[1].Reason != tc.reason {
				t.Fatalf("conditions %+v, want Accepted %s, Programmed %s (%s)", conds, tc.accepted, tc.programmed, tc.reason)
			}
			if conds[1].ObservedGeneration != 3 || conds[1].Message == "" || len(addrs) != tc.addrs {
				t.Errorf("conditions %+v, addresses %v", conds, addrs)
			}
			if tc.addrs > 0 && (addrs[0].Value != "10.96.0.7" || *addrs[0].Type != gatewayv1.IPAddressType) {
				t.Errorf("addresses %v, want IPAddress 10.96.0.7", addrs)
			}
			if statusUpToDate(gw, conds, addrs) {
				t.Error("a fresh Gateway's status is up to date")
			}
			// Once written, the same outcome later is up to date and keeps its transition time.
			gw2 := gw.DeepCopy()
			gw2.Status.Conditions, gw2.Status.Addresses = conds, addrs
			later := metav1.NewTime(t0.Add(time.Hour))
			conds2, addrs2 := gatewayStatus(gw2, tc.o, later)
			if !statusUpToDate(gw2, conds2, addrs2) || !conds2[1].LastTransitionTime.Equal(&t0) {
				t.Errorf("second pass: up to date %v, transition %v; want true, %v", statusUpToDate(gw2, conds2, addrs2), conds2[1].LastTransitionTime, t0)
			}
		})
	}
}
