package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ambit.dev/controller/internal/kubetest"
	"ambit.dev/controller/internal/waypointdeploy"
	"ambit.dev/mesh/gobuild"
	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// applyGateway applies a Gateway as the cluster admin: class ambit-waypoint unless class
// says otherwise, the mesh listener, and the ambit.dev/waypoint-for label when forLabel is set.
func (e *env) applyGateway(ns, name, class, forLabel string) *gatewayv1.Gateway {
	e.t.Helper()
	if class == "" {
		class = "ambit-waypoint"
	}
	labels := ""
	if forLabel != "" {
		labels = fmt.Sprintf("\n  labels: {ambit.dev/waypoint-for: %q}", forLabel)
	}
	ctx := testCtx(e.t, 20*time.Second)
	if err := e.c.ApplyYAML(ctx, fmt.Appendf(nil, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %s
  namespace: %s%s
spec:
  gatewayClassName: %s
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`, name, ns, labels, class)); err != nil {
		e.t.Fatalf("applying Gateway %s/%s: %v", ns, name, err)
	}
	return e.gateway(ns, name)
}

func (e *env) gateways() gatewayclient.Interface {
	e.t.Helper()
	c, err := gatewayclient.NewForConfig(e.c.Config)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) gateway(ns, name string) *gatewayv1.Gateway {
	e.t.Helper()
	gw, err := e.gateways().GatewayV1().Gateways(ns).Get(testCtx(e.t, 10*time.Second), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("reading Gateway %s/%s: %v", ns, name, err)
	}
	return gw
}

// waypointObjects are a waypoint's ServiceAccount, Deployment and Service, nil where missing.
type waypointObjects struct {
	sa  *corev1.ServiceAccount
	dep *appsv1.Deployment
	svc *corev1.Service
}

func (e *env) waypointObjects(ns, name string) waypointObjects {
	e.t.Helper()
	ctx := testCtx(e.t, 10*time.Second)
	var o waypointObjects
	var err error
	ok := func(err error) bool {
		if err != nil && !apierrors.IsNotFound(err) {
			e.t.Fatal(err)
		}
		return err == nil
	}
	if o.sa, err = e.c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{}); !ok(err) {
		o.sa = nil
	}
	if o.dep, err = e.c.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{}); !ok(err) {
		o.dep = nil
	}
	if o.svc, err = e.c.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); !ok(err) {
		o.svc = nil
	}
	return o
}

func (o waypointObjects) all() bool  { return o.sa != nil && o.dep != nil && o.svc != nil }
func (o waypointObjects) none() bool { return o.sa == nil && o.dep == nil && o.svc == nil }

// waitWaypointObjects waits until the waypoint's three objects exist.
func (e *env) waitWaypointObjects(ns, name string) waypointObjects {
	e.t.Helper()
	var o waypointObjects
	wait.Until(e.t, settle, fmt.Sprintf("every waypoint object of %s/%s", ns, name), func() error {
		if o = e.waypointObjects(ns, name); !o.all() {
			return fmt.Errorf("objects %+v", o)
		}
		return nil
	})
	return o
}

// waitCondition waits until the Gateway's condition has the status and reason.
func (e *env) waitCondition(ns, name, typ string, status metav1.ConditionStatus, reason string) *gatewayv1.Gateway {
	e.t.Helper()
	var gw *gatewayv1.Gateway
	wait.Until(e.t, settle, fmt.Sprintf("Gateway %s/%s condition %s=%s (%s)", ns, name, typ, status, reason), func() error {
		gw = e.gateway(ns, name)
		if c := meta.FindStatusCondition(gw.Status.Conditions, typ); c == nil || c.Status != status || c.Reason != reason || c.ObservedGeneration != gw.Generation {
			return fmt.Errorf("conditions %+v", gw.Status.Conditions)
		}
		return nil
	})
	return gw
}

// deploymentAvailable does the Deployment controller's and kubelet's part (there is neither
// in the test cluster): one replica, available.
func (e *env) deploymentAvailable(d *appsv1.Deployment) {
	e.t.Helper()
	d = d.DeepCopy()
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if _, err := e.c.Client.AppsV1().Deployments(d.Namespace).UpdateStatus(testCtx(e.t, 10*time.Second), d, metav1.UpdateOptions{}); err != nil {
		e.t.Fatalf("Deployment %s/%s status: %v", d.Namespace, d.Name, err)
	}
}

func hasArg(args []string, want string) bool { return slices.Contains(args, want) }

// Applying an ambit-waypoint Gateway makes its ServiceAccount, Deployment and Service,
// controlled by the Gateway; the Gateway's status gets the Service's cluster IP, which
// proxies then see as the Waypoint's address; a new image or template updates the
// Deployment alone and keeps what the user changed; deleting the Gateway removes all three.
func TestWaypointDeployment(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 90*time.Second)
	tok := e.ztunnelToken("node-a")
	if err := e.c.EnsureNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	first := e.startController()
	bundle, rootPEM := e.bundle()
	p := startProxy(t, e.addr, tok, "node-a", bundle)

	gw := e.applyGateway("shop", "wp", "", "serviceaccount")
	o := e.waitWaypointObjects("shop", "wp")
	for _, obj := range []metav1.Object{o.sa, o.dep, o.svc} {
		ref := metav1.GetControllerOf(obj)
		if ref == nil || ref.UID != gw.UID || ref.Kind != "Gateway" || ref.Name != "wp" || ref.APIVersion != "gateway.networking.k8s.io/v1" {
			t.Errorf("%s %s: controller %+v, want Gateway shop/wp uid %s", obj.GetName(), obj.GetUID(), ref, gw.UID)
		}
		if obj.GetLabels()[waypointdeploy.LabelGatewayName] != "wp" {
			t.Errorf("%s labels %v lack the gateway-name", obj.GetName(), obj.GetLabels())
		}
	}
	pod := o.dep.Spec.Template
	ctr := pod.Spec.Containers[0]
	if ctr.Image != "ambit/waypoint:dev" || pod.Spec.ServiceAccountName != "wp" {
		t.Errorf("Deployment runs %q as %q, want ambit/waypoint:dev as wp", ctr.Image, pod.Spec.ServiceAccountName)
	}
	for _, want := range []string{"--name=wp", "--namespace=shop", "--trust-domain=" + trustDomain,
		"--controller=ambit-controller.ambit-system.svc:15012", "--hbone-addr=:15008", "--ready-addr=:15021"} {
		if !hasArg(ctr.Args, want) {
			t.Errorf("waypoint args %q lack %q", ctr.Args, want)
		}
	}
	if pod.Annotations["ambit.dev/root-cert"] != string(rootPEM) {
		t.Errorf("pod root-cert annotation is not the CA Secret's root")
	}
	if o.svc.Spec.ClusterIP == "" || o.svc.Spec.Ports[0].Port != 15008 || o.svc.Spec.Ports[0].AppProtocol == nil || *o.svc.Spec.Ports[0].AppProtocol != "HBONE" {
		t.Errorf("Service %+v, want a cluster IP and port 15008 appProtocol HBONE first", o.svc.Spec)
	}

	// Status: the address at once; Programmed only once the Deployment has a replica.
	gw = e.waitCondition("shop", "wp", "Programmed", metav1.ConditionFalse, "Pending")
	if len(gw.Status.Addresses) != 1 || gw.Status.Addresses[0].Value != o.svc.Spec.ClusterIP {
		t.Errorf("Gateway status.addresses %+v, want [%s]", gw.Status.Addresses, o.svc.Spec.ClusterIP)
	}
	if c := meta.FindStatusCondition(gw.Status.Conditions, "Accepted"); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Accepted = %+v, want True", c)
	}
	e.deploymentAvailable(o.dep)
	e.waitCondition("shop", "wp", "Programmed", metav1.ConditionTrue, "Programmed")

	// A connected proxy sees the Waypoint at the Service's address.
	wait.Until(t, settle, "Waypoint shop/wp at address "+o.svc.Spec.ClusterIP, func() error {
		w := p.waypoint("shop", "wp")
		if a, ok := netip.AddrFromSlice(w.GetAddress().GetAddress()); w == nil || !ok || a.Unmap().String() != o.svc.Spec.ClusterIP {
			return fmt.Errorf("proxy holds %v", w)
		}
		return nil
	})

	// The user scales the Deployment and annotates it: fields the controller does not own.
	if _, err := e.c.Client.AppsV1().Deployments("shop").Patch(ctx, "wp", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"team":"payments"}},"spec":{"replicas":3}}`), metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatal(err)
	}
	before := e.waypointObjects("shop", "wp")

	// A new image and template: the controller restarts with them (a template is read at
	// start) and updates the Deployment; the ServiceAccount and Service, which render the same,
	// are not written.
	first.stop()
	e.waypointImage = "ambit/waypoint:v2"
	e.waypointTemplate = filepath.Join(t.TempDir(), "waypoint.yaml")
	tmpl := strings.Replace(string(waypointdeploy.DefaultTemplate), "--drain-period=5s", "--drain-period=9s", 1)
	if tmpl == string(waypointdeploy.DefaultTemplate) {
		t.Fatal("the default template has no --drain-period=5s to change")
	}
	if err := os.WriteFile(e.waypointTemplate, []byte(tmpl), 0o600); err != nil {
		t.Fatal(err)
	}
	e.startController()
	var after waypointObjects
	wait.Until(t, settle, "the Deployment with image ambit/waypoint:v2", func() error {
		if after = e.waypointObjects("shop", "wp"); after.dep == nil || after.dep.Spec.Template.Spec.Containers[0].Image != "ambit/waypoint:v2" {
			return fmt.Errorf("Deployment after the restart: %+v", after.dep)
		}
		return nil
	})
	if a := after.dep.Spec.Template.Spec.Containers[0].Args; !hasArg(a, "--drain-period=9s") || hasArg(a, "--drain-period=5s") {
		t.Errorf("args after the template change %q, want --drain-period=9s only", a)
	}
	if r := after.dep.Spec.Replicas; r == nil || *r != 3 || after.dep.Annotations["team"] != "payments" {
		t.Errorf("Deployment after the update: replicas %v, annotations %v; want the user's 3 and team=payments", r, after.dep.Annotations)
	}
	if after.sa.ResourceVersion != before.sa.ResourceVersion || after.svc.ResourceVersion != before.svc.ResourceVersion {
		t.Errorf("unchanged objects were written: ServiceAccount %s → %s, Service %s → %s",
			before.sa.ResourceVersion, after.sa.ResourceVersion, before.svc.ResourceVersion, after.svc.ResourceVersion)
	}

	// Deleting the Gateway deletes its objects (the controller does; the ownerReferences
	// checked above would have the garbage collector do it in a real cluster) and the proxy
	// drops the Waypoint.
	if err := e.gateways().GatewayV1().Gateways("shop").Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "no waypoint objects after deleting the Gateway", func() error {
		if o := e.waypointObjects("shop", "wp"); !o.none() {
			return fmt.Errorf("objects %+v", o)
		}
		return nil
	})
	wait.Until(t, settle, "the proxy to drop Waypoint shop/wp", func() error {
		if w := p.waypoint("shop", "wp"); w != nil {
			return fmt.Errorf("proxy holds %v", w)
		}
		return nil
	})
}

// Gateways the controller must not deploy: another class (nothing, not even status), an
// invalid waypoint-for label (Accepted=False with one error naming the object and field,
// nothing created), and a name taken by someone else's ServiceAccount (never taken over).
func TestWaypointGatewaysNotDeployed(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 60*time.Second)
	if err := e.c.EnsureServiceAccount(ctx, "shop", "taken"); err != nil {
		t.Fatal(err)
	}
	e.startController()

	// One reconciler worker takes Gateways in the order they arrive: once "marker" is
	// deployed, the Gateways applied before it have been seen.
	foreign := e.applyGateway("shop", "foreign", "istio-waypoint", "")
	e.applyGateway("shop", "bad", "", "pods")
	e.applyGateway("shop", "taken", "", "")
	e.applyGateway("shop", "marker", "", "")
	e.waitWaypointObjects("shop", "marker")

	if o := e.waypointObjects("shop", "foreign"); !o.none() {
		t.Errorf("a Gateway of another class got objects: %+v", o)
	}
	if got := e.gateway("shop", "foreign"); fmt.Sprint(got.Status) != fmt.Sprint(foreign.Status) {
		t.Errorf("a Gateway of another class got status %+v (was %+v)", got.Status, foreign.Status)
	}

	gw := e.waitCondition("shop", "bad", "Accepted", metav1.ConditionFalse, "Invalid")
	msg := meta.FindStatusCondition(gw.Status.Conditions, "Accepted").Message
	if want := `Gateway shop/bad: metadata.labels[ambit.dev/waypoint-for]: "pods" is not serviceaccount, service or namespace`; msg != want {
		t.Errorf("Accepted message %q, want %q", msg, want)
	}
	if o := e.waypointObjects("shop", "bad"); !o.none() || len(gw.Status.Addresses) != 0 {
		t.Errorf("an invalid Gateway got objects %+v, addresses %v", o, gw.Status.Addresses)
	}

	gw = e.waitCondition("shop", "taken", "Programmed", metav1.ConditionFalse, waypointdeploy.ReasonConflict)
	if msg := meta.FindStatusCondition(gw.Status.Conditions, "Programmed").Message; !strings.Contains(msg, "ServiceAccount shop/taken exists and is not this Gateway's") {
		t.Errorf("Programmed message %q does not name the ServiceAccount in the way", msg)
	}
	o := e.waypointObjects("shop", "taken")
	if o.dep != nil || o.svc != nil || len(o.sa.OwnerReferences) != 0 || o.sa.Labels[waypointdeploy.LabelGatewayName] != "" {
		t.Errorf("the user's ServiceAccount was taken over or the waypoint deployed: %+v", o)
	}
	// Deleting such a Gateway leaves the user's ServiceAccount alone.
	if err := e.gateways().GatewayV1().Gateways("shop").Delete(ctx, "taken", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.gateways().GatewayV1().Gateways("shop").Delete(ctx, "marker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "marker's objects deleted with it", func() error {
		if o := e.waypointObjects("shop", "marker"); !o.none() {
			return fmt.Errorf("objects %+v", o)
		}
		return nil
	})
	if e.waypointObjects("shop", "taken").sa == nil {
		t.Error("deleting the Gateway deleted the user's ServiceAccount of the same name")
	}
}

// A waypoint pod authenticates with its own ServiceAccount's token (bound to the pod, as the
// template's projected token is): it gets its config and the certificate of its own
// identity, nothing else, not even the identity of a pod on its node.
func TestWaypointOwnToken(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 60*time.Second)
	e.pod("shop", "web", "alice", "node-a", "10.1.0.40")
	e.startController()
	bundle, _ := e.bundle()
	e.applyGateway("shop", "wp", "", "")
	e.waitWaypointObjects("shop", "wp")

	// The Deployment's pod, as the Deployment controller and the scheduler would make it.
	wpPod := e.pod("shop", "wp-5d8f", "wp", "node-a", "10.1.0.41")
	tok, err := e.c.Token(ctx, "shop", "wp", authenticationv1.TokenRequestSpec{
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: wpPod.Name, UID: wpPod.UID},
	})
	if err != nil {
		t.Fatal(err)
	}
	self := xdsclient.NodeInfo{ID: "waypoint~shop~wp~node-a", Node: "node-a", Kind: xdsclient.KindWaypoint, WaypointNamespace: "shop", WaypointName: "wp"}
	p := startProxyAs(t, e.addr, tok, self, bundle)
	wait.Until(t, settle, "the waypoint's config", func() error {
		if wp, web := p.waypoint("shop", "wp"), p.workload("shop", "web"); wp == nil || web == nil {
			return fmt.Errorf("proxy holds Waypoint %v, Workload %v", wp, web)
		}
		return nil
	})

	conn := dial(t, e.addr, tok, bundle)
	if err := certify(ctx, conn, workloadID(t, "shop", "wp"), bundle); err != nil {
		t.Errorf("waypoint asking for its own identity: %v", err)
	}
	for _, id := range []string{"shop/alice", "other/wp", "ambit-system/ztunnel"} {
		ns, sa, _ := strings.Cut(id, "/")
		if err := certify(ctx, conn, workloadID(t, ns, sa), bundle); code(err) != codes.PermissionDenied {
			t.Errorf("waypoint shop/wp asking for %s: %v, want PermissionDenied", id, err)
		}
	}

	// Its token is good for its own config only: not a ztunnel's, not another waypoint's.
	for _, claim := range []xdsclient.NodeInfo{
		{ID: "ztunnel-node-a", Node: "node-a", Kind: xdsclient.KindZtunnel},
		{ID: "waypoint~shop~other~node-a", Node: "node-a", Kind: xdsclient.KindWaypoint, WaypointNamespace: "shop", WaypointName: "other"},
	} {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, e.addr, tok, bundle)).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The server may refuse before reading; Recv then carries the status.
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: configv1.WaypointTypeURL, Node: claim.Proto()}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if _, err := st.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("waypoint token claiming %s %s/%s: %v, want PermissionDenied", claim.Kind, claim.WaypointNamespace, claim.WaypointName, err)
		}
	}

	// The waypoint binary itself, run with the Deployment's arguments and what the kubelet
	// would give it (the projected token, the root from the pod's annotation, NODE_NAME),
	// becomes ready: it holds every config type and its certificate. Later flags win, so
	// only the addresses are the test's.
	o := e.waitWaypointObjects("shop", "wp")
	ready := runWaypoint(t, o.dep, tok, "node-a", e.addr)
	wait.Until(t, 30*time.Second, "the waypoint binary to become ready", func() error {
		return getOK("http://" + ready + "/healthz/ready")
	})

	// A ServiceAccount that is no waypoint's (the Gateway is gone) is refused outright.
	if err := e.gateways().GatewayV1().Gateways("shop").Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "the token of a deleted waypoint's ServiceAccount refused", func() error {
		if err := certify(ctx, dial(t, e.addr, tok, bundle), workloadID(t, "shop", "wp"), bundle); code(err) != codes.Unauthenticated {
			return fmt.Errorf("certificate request: %v, want Unauthenticated", err)
		}
		return nil
	})
}

// runWaypoint builds waypoint/cmd/waypoint and runs it as the Deployment's container would
// run, with the token and the root certificate in files, NODE_NAME set, and the controller
// and listener addresses overridden for the test. It returns the readiness address.
func runWaypoint(t *testing.T, dep *appsv1.Deployment, token, node, controller string) string {
	t.Helper()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "waypoint")
	if err := gobuild.Build(root, bin, nil, "./waypoint/cmd/waypoint"); err != nil {
		t.Fatalf("building the waypoint: %v", err)
	}
	pod := dep.Spec.Template
	files := map[string]string{"token": token, "root-cert.pem": pod.Annotations["ambit.dev/root-cert"]}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ready := "127.0.0.1:" + strconv.Itoa(freePort(t))
	args := append(slices.Clone(pod.Spec.Containers[0].Args),
		"--controller="+controller, "--token-file="+filepath.Join(dir, "token"), "--root-cert="+filepath.Join(dir, "root-cert.pem"),
		"--hbone-addr=127.0.0.1:"+strconv.Itoa(freePort(t)), "--ready-addr="+ready, "--metrics-addr=", "--admin-addr=")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "NODE_NAME="+node)
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	return ready
}
