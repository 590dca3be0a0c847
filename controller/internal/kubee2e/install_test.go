package kubee2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"ambit.dev/controller/internal/cli"
	"ambit.dev/controller/internal/clustertest"
)

// ambitctl runs an ambitctl command in process against the cluster and returns its output.
func ambitctl(t *testing.T, c *clustertest.Cluster, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "ambitctl", SilenceUsage: true, SilenceErrors: true}
	cli.AddCommands(root, cli.Options{Invoked: "bin/ambitctl"})
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append(args, "--kubeconfig", c.Kubeconfig))
	err := root.Execute()
	t.Logf("$ ambitctl %s\n%s", strings.Join(args, " "), out.String())
	return out.String(), err
}

type echo struct {
	Pod      string `json:"pod"`
	Caller   string `json:"caller"`
	Identity string `json:"identity"`
	MTLS     bool   `json:"mtls"`
}

func testPod(c *clustertest.Cluster, ns, name, sa, node string) *corev1.Pod {
	root := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeSelector:       map[string]string{"kubernetes.io/hostname": node},
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           c.Image("testapp"),
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"--kind", "http-echo", "--port", "8080", "--pod", ns + "/" + name, "--node-api", "/var/run/ambit/ztunnel.sock"},
				Ports:           []corev1.ContainerPort{{ContainerPort: 8080}},
				ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1},
				// Root, to ask the node's ztunnel (its socket is root's) who calls.
				SecurityContext: &corev1.SecurityContext{RunAsUser: &root},
				VolumeMounts:    []corev1.VolumeMount{{Name: "ambit", MountPath: "/var/run/ambit"}},
			}},
			Volumes: []corev1.Volume{{Name: "ambit", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/ambit"}}}},
		},
	}
}

// podNetns is /proc/<pid>/ns/net of a process of the pod (found by its UID in the cgroup
// path): the pod's network namespace, from the machine.
func podNetns(uid string) (string, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err == nil && strings.Contains(string(cg), "pod"+uid) {
			return filepath.Join("/proc", e.Name(), "ns", "net"), nil
		}
	}
	return "", fmt.Errorf("no process of pod %s", uid)
}

func inNetns(ctx context.Context, netns string, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "--"}, argv...)...).CombinedOutput()
	return string(out), err
}

func get(ctx context.Context, c *clustertest.Cluster, ns, from, url string) (echo, error) {
	var e echo
	out, err := c.Kubectl(ctx, "exec", "-n", ns, from, "--", "testapp", "--get", url)
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		return e, fmt.Errorf("%v: %q", err, out)
	}
	return e, nil
}

// TestInstall installs ambit with ambitctl into a two-node cluster, checks it, meshes two real
// pods on different nodes (HBONE only between them, the server sees the client's SPIFFE
// identity), denies and allows with an L4 policy, and uninstalls, leaving no rule in any pod
// and no CNI config on any node.
func TestInstall(t *testing.T) {
	suite := time.Now()
	c := clustertest.Start(t, clustertest.Options{Nodes: 2, HostPaths: []string{"/var/run/ambit", "/var/lib/ambit"}})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dump := func() {
		for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"get", "events", "-n", "demo"}, {"logs", "-n", "ambit-system", "-l", "app.kubernetes.io/name=ztunnel", "--tail", "40", "--prefix"},
			{"logs", "-n", "ambit-system", "-l", "app.kubernetes.io/name=ambit-node-agent", "--tail", "40", "--prefix"},
			{"logs", "-n", "ambit-system", "-l", "app.kubernetes.io/name=ambit-controller", "--tail", "20", "--prefix"}} {
			out, err := c.Kubectl(context.Background(), args...)
			t.Logf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	begin := time.Now()
	if _, err := ambitctl(t, c, "install", "--registry", "ambit.dev", "--tag", c.Version, "--image-pull-policy", "Never", "--log-level", "debug"); err != nil {
		dump()
		t.Fatalf("install: %v", err)
	}
	installTime := time.Since(begin)
	// Idempotent: a second install changes nothing and succeeds.
	if _, err := ambitctl(t, c, "install", "--registry", "ambit.dev", "--tag", c.Version, "--image-pull-policy", "Never", "--log-level", "debug"); err != nil {
		t.Fatalf("second install: %v", err)
	}
	for _, n := range c.Nodes {
		conf, err := os.ReadFile(filepath.Join(n.CNIConfDir, "10-ambit.conflist"))
		if err != nil || !strings.Contains(string(conf), `"ambit-cni"`) {
			t.Errorf("node %s: conflist without ambit-cni (%v):\n%s", n.Name, err, conf)
		}
		if _, err := os.Stat(filepath.Join(n.CNIBinDir, "ambit-cni")); err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		}
	}
	if out, err := ambitctl(t, c, "check"); err != nil || !strings.Contains(out, "Status check results are ✔") {
		dump()
		t.Fatalf("check after install: %v", err)
	}
	if out, err := ambitctl(t, c, "version"); err != nil || !strings.Contains(out, "ztunnel: "+c.Version+" (2 pods)") {
		t.Errorf("version: %v, want ztunnel %s on 2 pods", err, c.Version)
	}

	// Enrol, then start the pods: the CNI plugin hands them to ztunnel.
	const ns = "demo"
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"client", "server"} {
		if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ambitctl(t, c, "namespace", "enable", ns); err != nil {
		t.Fatal(err)
	}
	begin = time.Now()
	for _, p := range []*corev1.Pod{testPod(c, ns, "client", "client", c.Nodes[0].Name), testPod(c, ns, "server", "server", c.Nodes[1].Name)} {
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	podCtx, podCancel := context.WithTimeout(ctx, 90*time.Second)
	defer podCancel()
	client, err := c.WaitPodRunning(podCtx, ns, "client")
	if err != nil {
		dump()
		t.Fatal(err)
	}
	server, err := c.WaitPodRunning(podCtx, ns, "server")
	if err != nil {
		dump()
		t.Fatal(err)
	}
	url := "http://" + server.Status.PodIP + ":8080/?format=json"
	wantID := "spiffe://cluster.local/ns/demo/sa/client"
	var e echo
	for {
		e, err = get(ctx, c, ns, "client", url)
		if err == nil && e.Identity == wantID || ctx.Err() != nil {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	meshed := time.Since(begin)
	if e.Identity != wantID || !e.MTLS || !strings.HasPrefix(e.Caller, client.Status.PodIP+":") {
		dump()
		t.Fatalf("client → server: %+v (%v), want identity %s over mTLS from %s", e, err, wantID, client.Status.PodIP)
	}
	t.Logf("first pods meshed %v after create: %+v", meshed.Round(10*time.Millisecond), e)

	t.Run("OnlyHBONEOnTheWire", func(t *testing.T) {
		// Count the client's TCP packets to the server as node0 forwards them: all to 15008.
		n := c.Nodes[0]
		for _, args := range [][]string{{"iptables", "-N", "AMBITE2E"}, {"iptables", "-A", "AMBITE2E", "-p", "tcp", "--dport", "15008"},
			{"iptables", "-A", "AMBITE2E", "-p", "tcp", "!", "--dport", "15008"},
			{"iptables", "-I", "FORWARD", "-s", client.Status.PodIP, "-d", server.Status.PodIP, "-j", "AMBITE2E"}} {
			if _, err := n.Run(ctx, args...); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			if _, err := get(ctx, c, ns, "client", url); err != nil {
				t.Fatal(err)
			}
		}
		out, err := n.Run(ctx, "iptables", "-nvxL", "AMBITE2E")
		if err != nil {
			t.Fatal(err)
		}
		hbone := regexp.MustCompile(`(?m)^\s*(\d+)\s.*dpt:15008\s*$`).FindStringSubmatch(out)
		other := regexp.MustCompile(`(?m)^\s*(\d+)\s.*dpt:!15008\s*$`).FindStringSubmatch(out)
		if hbone == nil || other == nil || hbone[1] == "0" || other[1] != "0" {
			t.Errorf("client → server packets forwarded by node0, want all to 15008:\n%s", out)
		}
		uid := string(server.UID)
		netns, err := podNetns(uid)
		if err != nil {
			t.Fatal(err)
		}
		rules, err := inNetns(ctx, netns, "iptables-save")
		if err != nil || !strings.Contains(rules, "AMBIT_PREROUTING") {
			t.Errorf("server pod's rules: %v\n%s", err, rules)
		}
	})

	t.Run("L4Deny", func(t *testing.T) {
		policy := `apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-client
  namespace: demo
spec:
  selector:
    matchLabels:
      app: server
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
`
		f := filepath.Join(t.TempDir(), "deny.yaml")
		if err := os.WriteFile(f, []byte(policy), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := get(ctx, c, ns, "client", url)
			if err != nil {
				t.Logf("denied: %v", err)
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the DENY policy did not refuse the client within 30 s")
			}
			time.Sleep(300 * time.Millisecond)
		}
		if _, err := c.Kubectl(ctx, "delete", "-f", f); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(30 * time.Second)
		for {
			e, err := get(ctx, c, ns, "client", url)
			if err == nil && e.Identity == wantID {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the policy's removal: %v", err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	if out, err := ambitctl(t, c, "check"); err != nil || !strings.Contains(out, "2 running pods of enrolled namespaces are captured") {
		dump()
		t.Errorf("check with two meshed pods: %v", err)
	}

	t.Run("CapturedBeforeStart", func(t *testing.T) { testCapturedBeforeStart(ctx, t, c, ns, url, dump) })
	t.Run("WaypointSplit", func(t *testing.T) { testWaypointSplit(ctx, t, c, ns, dump) })
	t.Run("ZtunnelRolloutRestart", func(t *testing.T) { testZtunnelRollout(ctx, t, c, ns, url, dump) })
	t.Run("ProxyDebugThroughAPIServer", func(t *testing.T) { testProxyDebug(ctx, t, c, ns) })
	t.Run("LeaderKilledUnderChurn", func(t *testing.T) { testLeaderKilled(ctx, t, c, ns, dump) })

	// Uninstall: no rule in any pod, no CNI config on any node.
	netns := map[string]string{}
	for _, p := range []*corev1.Pod{client, server} {
		if netns[p.Name], err = podNetns(string(p.UID)); err != nil {
			t.Fatal(err)
		}
	}
	begin = time.Now()
	if _, err := ambitctl(t, c, "uninstall"); err != nil {
		dump()
		t.Fatalf("uninstall: %v", err)
	}
	uninstallTime := time.Since(begin)
	for name, path := range netns {
		rules, err := inNetns(ctx, path, "iptables-save")
		if err != nil || strings.Contains(rules, "AMBIT") {
			t.Errorf("pod %s after uninstall (%v):\n%s", name, err, rules)
		}
	}
	for _, n := range c.Nodes {
		conf, _ := os.ReadFile(filepath.Join(n.CNIConfDir, "10-ambit.conflist"))
		if strings.Contains(string(conf), "ambit-cni") {
			t.Errorf("node %s: conflist after uninstall:\n%s", n.Name, conf)
		}
		for _, f := range []string{filepath.Join(n.CNIBinDir, "ambit-cni"), filepath.Join(n.CNIConfDir, "ambit-cni.kubeconfig")} {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("node %s: %s left after uninstall", n.Name, f)
			}
		}
	}
	// The pods keep working, outside the mesh.
	if e, err := get(ctx, c, ns, "client", url); err != nil || e.Identity != "" {
		t.Errorf("client → server after uninstall: %+v %v, want plaintext", e, err)
	}
	t.Logf("timings: cluster up %v, install %v, first pods meshed %v after create, uninstall %v, whole test %v",
		c.StartedIn.Round(10*time.Millisecond), installTime.Round(10*time.Millisecond), meshed.Round(10*time.Millisecond),
		uninstallTime.Round(10*time.Millisecond), time.Since(suite).Round(10*time.Millisecond))
}
