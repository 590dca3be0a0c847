package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// echo is what the test app's HTTP echo answers (controller/lab.Echo).
type echo struct {
	Pod    string `json:"pod"`
	Caller string `json:"caller"`
}

func echoPod(c *Cluster, name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/hostname": node},
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           c.Image("testapp"),
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"--kind", "http-echo", "--port", "8080"},
				Env: []corev1.EnvVar{
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				},
				Ports:          []corev1.ContainerPort{{ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1},
			}},
		},
	}
}

// TestCluster runs two pods of the test app on two real kubelets, checks pod-to-pod traffic
// across the nodes (the caller's address arrives unchanged), a ClusterIP Service through
// kube-proxy, traffic from the host, kubectl exec and logs, and that teardown leaves nothing
// behind.
func TestCluster(t *testing.T) {
	c := Start(t, Options{Nodes: 2, HostPaths: []string{"/run/ambit-clustertest"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	begin := time.Now()
	for i, name := range []string{"echo-a", "echo-b"} {
		if _, err := c.Client.CoreV1().Pods("default").Create(ctx, echoPod(c, name, c.Nodes[i].Name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := c.WaitPodRunning(ctx, "default", "echo-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.WaitPodRunning(ctx, "default", "echo-b")
	if err != nil {
		t.Fatal(err)
	}
	podsRunning := time.Since(begin)
	t.Logf("two pods Running and Ready %v after create: echo-a %s on %s, echo-b %s on %s",
		podsRunning.Round(10*time.Millisecond), a.Status.PodIP, a.Spec.NodeName, b.Status.PodIP, b.Spec.NodeName)
	for i, p := range []*corev1.Pod{a, b} {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !c.PodCIDR.Contains(ip) {
			t.Errorf("pod %s has IP %q, outside the cluster's pod CIDR %s", p.Name, p.Status.PodIP, c.PodCIDR)
		}
		if p.Spec.NodeName != c.Nodes[i].Name {
			t.Errorf("pod %s on %s, want %s", p.Name, p.Spec.NodeName, c.Nodes[i].Name)
		}
	}

	t.Run("FromHost", func(t *testing.T) {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + b.Status.PodIP + ":8080/?format=json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e echo
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
		if e.Pod != "default/echo-b" || !strings.HasPrefix(e.Caller, c.HostIP.String()+":") {
			t.Errorf("got %+v, want pod default/echo-b and caller %s", e, c.HostIP)
		}
	})

	t.Run("PodToPod", func(t *testing.T) {
		// Across the nodes: echo-a on node0 calls echo-b on node1, and echo-b sees echo-a's IP.
		out, err := c.Kubectl(ctx, "exec", "-n", "default", "echo-a", "--", "testapp", "--get", "http://"+b.Status.PodIP+":8080/?format=json")
		if err != nil {
			t.Fatal(err)
		}
		var e echo
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("%v: %q", err, out)
		}
		if e.Pod != "default/echo-b" || !strings.HasPrefix(e.Caller, a.Status.PodIP+":") {
			t.Errorf("got %+v, want pod default/echo-b and caller %s", e, a.Status.PodIP)
		}
	})

	t.Run("ClusterIP", func(t *testing.T) {
		svc, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "echo-b", Namespace: "default"},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "echo-b"},
				Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		url := fmt.Sprintf("http://%s:80/?format=json", svc.Spec.ClusterIP)
		// kube-proxy programs the Service within a second or two of its endpoints.
		var out string
		for {
			out, err = c.Kubectl(ctx, "exec", "-n", "default", "echo-a", "--", "testapp", "--get", url)
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		var e echo
		if err := json.Unmarshal([]byte(out), &e); err != nil || e.Pod != "default/echo-b" {
			t.Errorf("through %s: got %q (%v), want an answer of default/echo-b", url, out, err)
		}
	})

	t.Run("APIServerFromPod", func(t *testing.T) {
		// The kubernetes Service (10.96.0.1:443) leads through kube-proxy to the API server on
		// the host: the TLS handshake gets as far as the certificate, which testapp's client
		// does not trust (it has no CA), and the certificate names the ClusterIP.
		_, err := c.Kubectl(ctx, "exec", "-n", "default", "echo-a", "--", "testapp", "--get", "https://10.96.0.1:443/readyz")
		if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("GET https://10.96.0.1/readyz from a pod: %v, want the API server's certificate refused as unknown", err)
		}
	})

	t.Run("PrivatePaths", func(t *testing.T) {
		// Inside a node, the standard CNI directories and the extra host path are the node's own.
		for _, n := range c.Nodes {
			if _, err := n.Run(ctx, "test", "-f", "/etc/cni/net.d/10-ambit.conflist", "-a", "-x", "/opt/cni/bin/bridge"); err != nil {
				t.Errorf("CNI directories inside the node: %v", err)
			}
			if _, err := n.Run(ctx, "touch", "/run/ambit-clustertest/"+n.Name); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range c.Nodes {
			ents, err := os.ReadDir(n.HostPath("/run/ambit-clustertest"))
			if err != nil || len(ents) != 1 || ents[0].Name() != n.Name {
				t.Errorf("node %s's /run/ambit-clustertest holds %v (%v), want only its own file", n.Name, ents, err)
			}
		}
		if ents, _ := os.ReadDir("/run/ambit-clustertest"); len(ents) != 0 {
			t.Errorf("the machine's /run/ambit-clustertest holds %v, want nothing", ents)
		}
	})

	t.Run("Logs", func(t *testing.T) {
		out, err := c.Kubectl(ctx, "logs", "-n", "default", "echo-b")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "msg=serving") || !strings.Contains(out, "pod=default/echo-b") {
			t.Errorf("kubectl logs echo-b: %q, want the app's serving line", out)
		}
	})

	begin = time.Now()
	if err := c.Stop(); err != nil {
		t.Errorf("teardown: %v", err)
	}
	teardown := time.Since(begin)
	if left := c.Leftovers(); len(left) > 0 {
		t.Errorf("teardown left behind:\n  %s", strings.Join(left, "\n  "))
	}
	t.Logf("timings: cluster up %v (control plane %v, 2 nodes Ready %v), two pods Running %v after create, teardown %v",
		c.StartedIn.Round(10*time.Millisecond), c.ControlPlaneUp.Round(10*time.Millisecond), c.NodesReady.Round(10*time.Millisecond),
		podsRunning.Round(10*time.Millisecond), teardown.Round(10*time.Millisecond))
}
