package kubee2e

import (
	"ambit.dev/mesh/wait"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"ambit.dev/controller/internal/clustertest"
)

// calls is what `testapp --get URL --count N` prints.
type calls struct {
	Calls  int            `json:"calls"`
	Failed int            `json:"failed"`
	Errors []string       `json:"errors"`
	Pods   map[string]int `json:"pods"`
}

// callMany makes n GETs of url from pod `from`, each on a new connection, one every `every`.
func callMany(ctx context.Context, c *clustertest.Cluster, ns, from, url string, n int, every time.Duration) (calls, error) {
	var r calls
	out, err := c.Kubectl(ctx, "exec", "-n", ns, from, "--", "testapp", "--get", url, "--count", fmt.Sprint(n), "--every", every.String())
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("%v: %q", err, out)
	}
	return r, nil
}

// webPods starts web-v1 on the first node and web-v2 on the second, both running as
// ServiceAccount web, and the Services web (both), web-v1 and web-v2 (port 80 → 8080).
func webPods(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns string) (webIP string) {
	t.Helper()
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, v := range []string{"v1", "v2"} {
		p := testPod(c, ns, "web-"+v, "web", c.Nodes[i%len(c.Nodes)].Name)
		p.Labels = map[string]string{"app": "web", "version": v}
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, sel := range map[string]map[string]string{
		"web": {"app": "web"}, "web-v1": {"app": "web", "version": "v1"}, "web-v2": {"app": "web", "version": "v2"},
	} {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), AppProtocol: ptr("http")},
			}},
		}
		created, err := c.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if name == "web" {
			webIP = created.Spec.ClusterIP
		}
	}
	for _, name := range []string{"web-v1", "web-v2"} {
		pctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		_, err := c.WaitPodRunning(pctx, ns, name)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	return webIP
}

func ptr[T any](v T) *T { return &v }

// testWaypointSplit: `ambitctl waypoint apply --for serviceaccount` runs the waypoint as a real
// pod of a Deployment the controller made; an HTTPRoute splitting Service web 90/10 with a
// retry (kept by the experimental-channel CRD) holds over 1,000 calls, each on a new
// connection, none failed.
func testWaypointSplit(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns string, dump func()) {
	webIP := webPods(ctx, t, c, ns)
	if _, err := ambitctl(t, c, "waypoint", "apply", "--for", "serviceaccount", "--name", "web-wp", "--target", "web", "-n", ns, "--enroll"); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	// The leader makes the Deployment once it sees the Gateway; rollout status fails at once
	// on a Deployment that does not exist yet.
	wait.Until(t, 60*time.Second, "the waypoint's Deployment to exist", func() error {
		_, err := c.Kubectl(ctx, "get", "-n", ns, "deployment/web-wp")
		return err
	})
	if _, err := c.Kubectl(ctx, "rollout", "status", "-n", ns, "deployment/web-wp", "--timeout=120s"); err != nil {
		dump()
		t.Fatalf("the waypoint's Deployment: %v", err)
	}
	t.Logf("waypoint web-wp available %v after apply", time.Since(begin).Round(10*time.Millisecond))
	route := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split, namespace: ` + ns + `}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, port: 80}
  rules:
  - backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
    retry: {attempts: 2, codes: [503], backoff: 25ms}
`
	f := filepath.Join(t.TempDir(), "split.yaml")
	if err := os.WriteFile(f, []byte(route), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
		t.Fatal(err)
	}
	url := "http://" + webIP + "/?format=json"
	// In force when a sample through the waypoint leans to v1: 50 calls of a 50/50 balance
	// give 40 or more to one side with a probability under 1e-5.
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := callMany(ctx, c, ns, "client", url, 50, 0)
		if err == nil && r.Failed == 0 && r.Pods[ns+"/web-v1"] >= 40 {
			break
		}
		if time.Now().After(deadline) {
			dump()
			t.Fatalf("the 90/10 split not in force after 60 s: %+v %v", r, err)
		}
		time.Sleep(time.Second)
	}
	const total = 1000
	begin = time.Now()
	r, err := callMany(ctx, c, ns, "client", url, total, 0)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	if r.Calls != total || r.Failed != 0 {
		t.Fatalf("%d calls, %d failed: %s", r.Calls, r.Failed, strings.Join(r.Errors, "\n"))
	}
	v1 := float64(r.Pods[ns+"/web-v1"]) / total * 100
	if v1 < 87 || v1 > 93 || r.Pods[ns+"/web-v1"]+r.Pods[ns+"/web-v2"] != total {
		t.Fatalf("90/10 split over %d calls: %v = %.1f%% to v1, want 90 ± 3", total, r.Pods, v1)
	}
	t.Logf("90/10 split through the waypoint pod over %d calls in %v: %.1f%% v1 (%v), 0 failed", total, took.Round(10*time.Millisecond), v1, r.Pods)
	// Who answered saw the waypoint as its caller, over mTLS.
	e, err := get(ctx, c, ns, "client", url)
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/web-wp"; err != nil || e.Identity != want || !e.MTLS {
		t.Errorf("web saw %+v (%v), want the waypoint %s over mTLS", e, err, want)
	}
}

// testZtunnelRollout: `kubectl rollout restart` of the ztunnel DaemonSet while the client opens
// a new connection to the server every 50 ms: the new ztunnel of each node takes the pods over
// from the old one (maxSurge 1), and no connection fails.
func testZtunnelRollout(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns, url string, dump func()) {
	const every = 50 * time.Millisecond
	// Long enough to cover the whole rollout of two nodes (each: a new pod Ready, the old
	// one's drain), with calls before and after it.
	const n = 800
	type result struct {
		r   calls
		err error
		end time.Time
	}
	done := make(chan result, 1)
	go func() {
		r, err := callMany(ctx, c, ns, "client", url, n, every)
		done <- result{r, err, time.Now()}
	}()
	time.Sleep(2 * time.Second)
	begin := time.Now()
	if _, err := c.Kubectl(ctx, "rollout", "restart", "-n", "ambit-system", "daemonset/ztunnel"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "rollout", "status", "-n", "ambit-system", "daemonset/ztunnel", "--timeout=120s"); err != nil {
		dump()
		t.Fatalf("rollout: %v", err)
	}
	rolledAt := time.Now()
	rolled := rolledAt.Sub(begin)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.r.Calls != n || res.r.Failed != 0 {
		dump()
		t.Fatalf("%d new connections across the ztunnel rollout (%v), %d failed:\n%s", res.r.Calls, rolled.Round(10*time.Millisecond), res.r.Failed, strings.Join(res.r.Errors, "\n"))
	}
	if res.end.Before(rolledAt) {
		t.Fatalf("the %d calls ended before the rollout did (%v): they do not show it", n, rolled.Round(10*time.Millisecond))
	}
	t.Logf("ztunnel rollout restart of %d nodes in %v: %d new connections, one every %v, 0 failed", len(c.Nodes), rolled.Round(10*time.Millisecond), res.r.Calls, every)
	// The calls were meshed before and are after.
	if e, err := get(ctx, c, ns, "client", url); err != nil || !e.MTLS {
		t.Errorf("after the rollout: %+v %v, want mTLS", e, err)
	}
}

// testProxyDebug: proxy-status, ztunnel-config and waypoint status reach the controllers and
// the proxies of the cluster through the API server (port-forward), with nothing forwarded by
// hand: every ztunnel and the waypoint are connected and in sync, each node's ztunnel holds the
// meshed pods, and the waypoint's Deployment is ready.
func testProxyDebug(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns string) {
	// Just after a rollout a new proxy may not have acknowledged its first config yet.
	var out string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		out, err = ambitctl(t, c, "proxy-status")
		if err == nil && strings.Count(out, " SYNCED ") == len(c.Nodes)+1 && strings.Contains(out, ns+"/web-wp") &&
			strings.Contains(out, "CONTROLLER") && !strings.Contains(out, "STALE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy-status: %v, want %d ztunnels and waypoint %s/web-wp SYNCED:\n%s", err, len(c.Nodes), ns, out)
		}
		time.Sleep(time.Second)
	}
	for i, n := range c.Nodes {
		out, err := ambitctl(t, c, "ztunnel-config", "workloads", "-n", ns, "--node", n.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, pod := range []string{"client", "server", "web-v1", "web-v2"} {
			if !strings.Contains(out, pod) {
				t.Errorf("ztunnel of node %d (%s) does not list workload %s/%s:\n%s", i, n.Name, ns, pod, out)
			}
		}
	}
	if out, err := ambitctl(t, c, "ztunnel-config", "workloads"); err == nil || !strings.Contains(err.Error(), "--node") {
		t.Errorf("ztunnel-config without --node on %d nodes: %v, want an error asking for --node:\n%s", len(c.Nodes), err, out)
	}
	out, err := ambitctl(t, c, "waypoint", "status", "-n", ns)
	if err != nil || !strings.Contains(out, "web-wp") || !strings.Contains(out, "ready 1/1") || !strings.Contains(out, "SYNCED 1/1") {
		t.Errorf("waypoint status: %v, want web-wp ready 1/1 and SYNCED 1/1:\n%s", err, out)
	}
}

// testCapturedBeforeStart: a pod whose only container makes one request the moment it starts
// is already in the mesh then: the CNI ADD hands the pod to ztunnel with its addresses and
// ServiceAccount, ztunnel captures it (and the CA lets the node fetch the certificate of a
// pod bound to it but not running yet) before the ADD returns, so before the container runs.
// Before, capture waited for the controller to push the running pod, and such a first request
// left in plaintext.
func testCapturedBeforeStart(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns, url string, dump func()) {
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "early"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := testPod(c, ns, "early", "early", c.Nodes[0].Name)
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	ct := &p.Spec.Containers[0]
	ct.Args = []string{"--get", url}
	ct.ReadinessProbe, ct.Ports = nil, nil
	begin := time.Now()
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		got, err := c.Client.CoreV1().Pods(ns).Get(ctx, "early", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase == corev1.PodSucceeded || got.Status.Phase == corev1.PodFailed {
			break
		}
		if time.Now().After(deadline) {
			dump()
			t.Fatalf("pod early still %s after 90 s", got.Status.Phase)
		}
		time.Sleep(300 * time.Millisecond)
	}
	out, err := c.Kubectl(ctx, "logs", "-n", ns, "early")
	if err != nil {
		t.Fatal(err)
	}
	var e echo
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		dump()
		t.Fatalf("the pod's first request: %q (%v)", out, err)
	}
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/early"; e.Identity != want || !e.MTLS {
		dump()
		t.Fatalf("the pod's first request, made as its container started, arrived as %+v; want identity %s over mTLS", e, want)
	}
	t.Logf("a pod's first request, made as its container started, was meshed (%s over mTLS); create to done %v",
		e.Identity, time.Since(begin).Round(10*time.Millisecond))
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "early", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testLeaderKilled: the leading controller replica is killed (deleted with no grace) while pods
// come and go in the mesh; the other replica takes the Lease over, and in the end every node's
// ztunnel holds exactly the pods that exist: no proxy misses a change.
func testLeaderKilled(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns string, dump func()) {
	leases := c.Client.CoordinationV1().Leases("ambit-system")
	holder := func() string {
		l, err := leases.Get(ctx, "ambit-controller", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	leader := holder()
	if leader == "" {
		t.Fatal("no controller holds the Lease ambit-system/ambit-controller")
	}
	// Churn: six pods created one after the other across both nodes, two of them deleted again.
	churn := func(i int) string { return fmt.Sprintf("churn-%d", i) }
	done := make(chan error, 1)
	go func() {
		for i := range 6 {
			p := testPod(c, ns, churn(i), "client", c.Nodes[i%len(c.Nodes)].Name)
			if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				done <- err
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		for _, i := range []int{1, 4} {
			if err := c.Client.CoreV1().Pods(ns).Delete(ctx, churn(i), metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	time.Sleep(time.Second)
	killed := time.Now()
	if err := c.Client.CoreV1().Pods("ambit-system").Delete(ctx, leader, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	var next string
	deadline := time.Now().Add(60 * time.Second)
	for next = holder(); next == "" || next == leader; next = holder() {
		if time.Now().After(deadline) {
			dump()
			t.Fatalf("no other replica took the Lease over within 60 s of killing the leader %s", leader)
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(killed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, i := range []int{0, 2, 3, 5} {
		pctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		_, err := c.WaitPodRunning(pctx, ns, churn(i))
		cancel()
		if err != nil {
			dump()
			t.Fatal(err)
		}
		want[churn(i)] = true
	}
	for _, n := range c.Nodes {
		var out string
		deadline := time.Now().Add(30 * time.Second)
		for {
			var err error
			out, err = ambitctl(t, c, "ztunnel-config", "workloads", "-n", ns, "--node", n.Name)
			missing, extra := []string{}, []string{}
			if err == nil {
				for name := range want {
					if !strings.Contains(out, name+" ") {
						missing = append(missing, name)
					}
				}
				for _, i := range []int{1, 4} {
					if strings.Contains(out, churn(i)+" ") {
						extra = append(extra, churn(i))
					}
				}
				if len(missing) == 0 && len(extra) == 0 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("ztunnel of %s after the leader's death: %v, missing %v, deleted but held %v:\n%s", n.Name, err, missing, extra, out)
			}
			time.Sleep(time.Second)
		}
	}
	t.Logf("leader %s killed under pod churn: %s took the Lease over %v later; every ztunnel holds the %d pods that exist and none of the 2 deleted",
		leader, next, took.Round(10*time.Millisecond), len(want))
	for i := range 6 {
		_ = c.Client.CoreV1().Pods(ns).Delete(ctx, churn(i), metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	}
}
