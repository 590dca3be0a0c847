package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// In a cluster, proxy-status, ztunnel-config and waypoint status reach the controller's and
// the proxies' debug ports through the API server, as `kubectl port-forward` does (the pod's
// portforward subresource: WebSocket, falling back to SPDY): nothing is exposed and nothing has
// to be forwarded by hand. Each command forwards one pod's port to a free loopback port for as
// long as it runs.

// kubeconfigFound reports whether the usual kubeconfig loading rules would find a file:
// $KUBECONFIG, else ~/.kube/config. A command with no other target uses the cluster then.
func kubeconfigFound() bool {
	if v := os.Getenv("KUBECONFIG"); v != "" {
		for _, p := range filepath.SplitList(v) {
			if _, err := os.Stat(p); err == nil {
				return true
			}
		}
		return false
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(home, ".kube", "config"))
	return err == nil
}

// given reports whether --kubeconfig or --context was set: the user names a cluster.
func (f *kubeFlags) given() bool { return f.kubeconfig != "" || f.context != "" }

// registerTarget adds --kubeconfig and --context (no --timeout) for a command that can also
// reach a lab or an address.
func (f *kubeFlags) registerTarget(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to ask, through the API server (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&f.context, "context", "", "kubeconfig context (default: the current context)")
}

// forwarded is a pod's port reachable on a loopback address until close.
type forwarded struct {
	addr  string // 127.0.0.1:<local port>
	pod   string // namespace/name
	close func()
}

// forward forwards port of pod ns/name to a free loopback port.
func forward(ctx context.Context, c *cluster, ns, name string, port int) (*forwarded, error) {
	req := c.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(name).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(c.rest)
	if err != nil {
		return nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	if ws, err := portforward.NewSPDYOverWebsocketDialer(req.URL(), c.rest); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stop, ready, io.Discard, &errOut)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- pf.ForwardPorts() }()
	closeOnce := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New(strings.TrimSpace(errOut.String()))
		}
		return nil, fmt.Errorf("port-forward to pod %s/%s port %d: %w", ns, name, port, err)
	case <-ctx.Done():
		closeOnce()
		return nil, fmt.Errorf("port-forward to pod %s/%s port %d: %w", ns, name, port, ctx.Err())
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) == 0 {
		closeOnce()
		return nil, fmt.Errorf("port-forward to pod %s/%s port %d: no local port: %v", ns, name, port, err)
	}
	return &forwarded{addr: "127.0.0.1:" + strconv.Itoa(int(ports[0].Local)), pod: ns + "/" + name, close: closeOnce}, nil
}

// readyPods lists the Running, Ready pods of ns matching selector (and on node, if set),
// by name.
func readyPods(ctx context.Context, c *cluster, ns, selector, node string) ([]corev1.Pod, error) {
	opts := metav1.ListOptions{LabelSelector: selector}
	if node != "" {
		opts.FieldSelector = "spec.nodeName=" + node
	}
	list, err := c.kube.CoreV1().Pods(ns).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list pods %s in %s: %w", selector, ns, err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && podReady(&p) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// readyControllers lists the ready replicas of the cluster's controller; none is an error
// that says where to look.
func readyControllers(ctx context.Context, o Options, c *cluster) ([]corev1.Pod, error) {
	pods, err := readyPods(ctx, c, systemNamespace, controllerSelector, "")
	if err == nil && len(pods) == 0 {
		err = fmt.Errorf("no ready controller pod (%s) in %s of %s: see `%s check`", controllerSelector, systemNamespace, c.where, o.Invoked)
	}
	return pods, err
}

// forwardZtunnel forwards the admin port (15000) of the ztunnel of node; node may be empty
// when the cluster has one ztunnel.
func forwardZtunnel(ctx context.Context, c *cluster, node string) (*forwarded, error) {
	pods, err := readyPods(ctx, c, systemNamespace, ztunnelSelector, node)
	if err != nil {
		return nil, err
	}
	switch {
	case len(pods) == 0 && node != "":
		return nil, fmt.Errorf("no ready ztunnel pod on node %q of %s (is it a node of the cluster? see `kubectl get nodes`)", node, c.where)
	case len(pods) == 0:
		return nil, fmt.Errorf("no ready ztunnel pod in %s of %s: see `ambitctl check`", systemNamespace, c.where)
	case len(pods) > 1 && node == "":
		var nodes []string
		for _, p := range pods {
			nodes = append(nodes, p.Spec.NodeName)
		}
		return nil, fmt.Errorf("%d ztunnels in %s: name one with --node (%s)", len(pods), c.where, strings.Join(nodes, ", "))
	}
	// The newest, should a rollout have two on the node for a moment: it holds the pods.
	sort.Slice(pods, func(i, j int) bool { return pods[j].CreationTimestamp.Before(&pods[i].CreationTimestamp) })
	return forward(ctx, c, systemNamespace, pods[0].Name, ztunnelAdminPort)
}

const (
	controllerSelector  = "app.kubernetes.io/name=ambit-controller"
	ztunnelSelector     = "app.kubernetes.io/name=ztunnel"
	controllerDebugPort = 15014
	ztunnelAdminPort    = 15000
	// forwardTimeout bounds finding the pod and opening the forward.
	forwardTimeout = 20 * time.Second
)
