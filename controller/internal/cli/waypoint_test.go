package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	configv1 "ambit.dev/proto/config/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
)

func TestWaypointFolderMode(t *testing.T) {
	dir := t.TempDir()
	sa := "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: server\n  namespace: demo\n"
	if err := os.WriteFile(filepath.Join(dir, "sa.yaml"), []byte(sa), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"waypoint", "--config-dir", dir, "--lab-dir", noLab(t)}
	out, err := run(t, Options{}, append(args, "apply", "--for", "serviceaccount", "--name", "server", "-n", "demo", "--enroll")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "ServiceAccount demo/server bound to waypoint server") {
		t.Fatalf("apply said:\n%s", out)
	}
	// What was written is what the controller reads: a waypoint Gateway and a bound SA.
	for _, f := range []string{"sa.yaml", "waypoint-demo-server.yaml"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := source.ParseFile(f, b)
		if err != nil || len(objs) != 1 {
			t.Fatalf("%s: %d objects, %v", f, len(objs), err)
		}
		m, _ := objs[0].(metav1.Object)
		switch f {
		case "sa.yaml":
			if m.GetLabels()[model.LabelUseWaypoint] != "server" {
				t.Fatalf("ServiceAccount labels %v", m.GetLabels())
			}
		default:
			gw, isGW := objs[0].(*gatewayv1.Gateway)
			if !isGW {
				t.Fatalf("%s holds a %T", f, objs[0])
			}
			wp, ok, err := model.ConvertGateway(gw, "cluster.local")
			if err != nil || !ok || wp.GetFor() != configv1.Waypoint_SERVICEACCOUNT || wp.GetIdentity() != "spiffe://cluster.local/ns/demo/sa/server" {
				t.Fatalf("Gateway reads back as %v, ok %v, err %v", wp, ok, err)
			}
		}
	}
	out, err = run(t, Options{}, append(args, "list", "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var rows []waypointRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].Name != "server" || rows[0].For != "serviceaccount" {
		t.Fatalf("list: %s (%v)", out, err)
	}
	if _, err := run(t, Options{}, append(args, "apply", "--for", "sidecar")...); err == nil {
		t.Fatal("--for sidecar accepted")
	}
	if out, err := run(t, Options{}, append(args, "delete", "server", "-n", "demo")...); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "waypoint-demo-server.yaml")); !os.IsNotExist(err) {
		t.Fatalf("Gateway file left after delete: %v", err)
	}
}

func TestWaypointKubeMode(t *testing.T) {
	kc := kubefake.NewSimpleClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "shop"}})
	gc := gatewayfake.NewSimpleClientset()
	o := Options{
		NewKube:    func(string, string) (kubernetes.Interface, string, error) { return kc, "the test cluster", nil },
		NewGateway: func(string, string) (gatewayclient.Interface, error) { return gc, nil },
	}
	args := []string{"waypoint", "--kubeconfig", "x", "-n", "shop"}
	out, err := run(t, o, append(args, "apply", "--for", "service", "--name", "reviews-wp", "--target", "reviews", "--enroll")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	gw, err := gc.GatewayV1().Gateways("shop").Get(context.Background(), "reviews-wp", metav1.GetOptions{})
	if err != nil || string(gw.Spec.GatewayClassName) != model.WaypointClass || gw.Labels[model.LabelWaypointFor] != "service" {
		t.Fatalf("Gateway %+v, %v", gw, err)
	}
	svc, _ := kc.CoreV1().Services("shop").Get(context.Background(), "reviews", metav1.GetOptions{})
	if svc.Labels[model.LabelUseWaypoint] != "reviews-wp" {
		t.Fatalf("Service labels %v", svc.Labels)
	}
	// Again: nothing changes. A Service that does not exist cannot be bound.
	if out, err := run(t, o, append(args, "apply", "--for", "service", "--name", "reviews-wp", "--target", "reviews")...); err != nil || !strings.Contains(out, "nothing changed") {
		t.Fatalf("second apply: %v\n%s", err, out)
	}
	if _, err := run(t, o, append(args, "apply", "--for", "service", "--name", "x", "--target", "nope", "--enroll")...); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("binding a missing Service: %v", err)
	}
	out, err = run(t, o, append(args, "list")...)
	if err != nil || !strings.Contains(out, "reviews-wp") || !strings.Contains(out, "service") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if _, err := run(t, o, append(args, "delete", "reviews-wp")...); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.GatewayV1().Gateways("shop").Get(context.Background(), "reviews-wp", metav1.GetOptions{}); err == nil {
		t.Fatal("Gateway still there after delete")
	}
}
