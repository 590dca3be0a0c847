package model

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func meta(ns, name string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, UID: types.UID("uid-" + ns + "-" + name)}
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

type podOpt func(*corev1.Pod)

func pod(ns, name, node, ip string, labels map[string]string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: meta(ns, name, labels),
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "default", Containers: []corev1.Container{{
			Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      ip,
			PodIPs:     []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func withSA(sa string) podOpt { return func(p *corev1.Pod) { p.Spec.ServiceAccountName = sa } }

func service(ns, name, ip string, labels, sel map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	if len(ports) == 0 {
		ports = []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}
	}
	return &corev1.Service{
		ObjectMeta: meta(ns, name, labels),
		Spec:       corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Selector: sel, Ports: ports},
	}
}

func waypointGW(ns, name, forKind, ip string) *gatewayv1.Gateway {
	l := map[string]string{}
	if forKind != "" {
		l[LabelWaypointFor] = forKind
	}
	gw := &gatewayv1.Gateway{
		ObjectMeta: meta(ns, name, l),
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: WaypointClass,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	if ip != "" {
		gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Value: ip}}
	}
	return gw
}

func ptr[T any](v T) *T { return &v }

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// wantObjErr checks err is an *ObjectError naming kind/ns/name and field (by substring).
func wantObjErr(t *testing.T, err error, kind, ns, name, field string) {
	t.Helper()
	var oe *ObjectError
	if !errors.As(err, &oe) {
		t.Fatalf("error %v is not an *ObjectError", err)
	}
	if oe.Kind != kind || oe.Namespace != ns || oe.Name != name || !strings.Contains(oe.Field, field) {
		t.Fatalf("error %q names %s %s/%s field %s, want %s %s/%s field %s", err, oe.Kind, oe.Namespace, oe.Name, oe.Field, kind, ns, name, field)
	}
	if !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), ns+"/"+name) {
		t.Fatalf("error text %q does not name the object and field", err)
	}
}
