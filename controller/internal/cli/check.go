package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"ambit.dev/controller/internal/manifests"
	"ambit.dev/controller/internal/model"
	"ambit.dev/proto/nodeapi"
)

// checkResult is one line of `ambitctl check`.
type checkResult struct {
	name string
	err  error
	warn bool // a failure that does not fail the check
}

func checkCommand(o Options) *cobra.Command {
	var f kubeFlags
	var pre bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that ambit is installed and healthy (or, with --pre, that it can be)",
		Long: `Check the cluster of the kubeconfig in the manner of linkerd check: one line per check,
✔ or ✘ with the reason, and a failure exit status when any check fails.

  --pre   before an install: the API server answers (and its version), you may create what
          install creates, every node is Ready
  (none)  after an install: the API server, the CRDs Established, the controller available,
          ztunnel and the node agent ready on every node, the mesh root certificate valid
          (and the one ztunnel mounts the controller's), every running pod of an enrolled
          namespace captured by its node's ztunnel`,
		Example: `  ambitctl check --pre
  ambitctl check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.connect()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			return runCheck(ctx, cmd.OutOrStdout(), c, pre, o.Now())
		},
	}
	f.register(cmd, time.Minute)
	cmd.Flags().BoolVar(&pre, "pre", false, "check that ambit can be installed instead")
	return cmd
}

func runCheck(ctx context.Context, w io.Writer, c *cluster, pre bool, now time.Time) error {
	fmt.Fprintf(w, "Checking %s\n", c.where)
	failed := 0
	report := func(group string, rs []checkResult) {
		fmt.Fprintf(w, "\n%s\n%s\n", group, strings.Repeat("-", len(group)))
		for _, r := range rs {
			switch {
			case r.err == nil:
				fmt.Fprintf(w, "✔ %s\n", r.name)
			case r.warn:
				fmt.Fprintf(w, "‼ %s\n    %v\n", r.name, r.err)
			default:
				failed++
				fmt.Fprintf(w, "✘ %s\n    %v\n", r.name, r.err)
			}
		}
	}
	v, err := c.kube.Discovery().ServerVersion()
	api := []checkResult{{name: "can reach the API server at " + c.rest.Host, err: err}}
	if err == nil {
		api = append(api, checkResult{name: "API server version " + v.GitVersion})
	}
	report("kubernetes-api", api)
	if err != nil {
		return fmt.Errorf("check failed: the API server does not answer")
	}
	if pre {
		report("pre-install", preChecks(ctx, c))
	} else {
		report("ambit-install", installChecks(ctx, c))
		report("ambit-certificates", certChecks(ctx, c, now))
		report("ambit-dataplane", dataplaneChecks(ctx, c))
	}
	if failed > 0 {
		fmt.Fprintln(w)
		return fmt.Errorf("%d check(s) failed", failed)
	}
	fmt.Fprintln(w, "\nStatus check results are ✔")
	return nil
}

func preChecks(ctx context.Context, c *cluster) []checkResult {
	var out []checkResult
	for _, ra := range []authzv1.ResourceAttributes{
		{Verb: "create", Group: "", Resource: "namespaces"},
		{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"},
		{Verb: "create", Group: "apps", Resource: "deployments", Namespace: systemNamespace},
		{Verb: "create", Group: "apps", Resource: "daemonsets", Namespace: systemNamespace},
		{Verb: "get", Group: "", Resource: "secrets", Namespace: systemNamespace},
	} {
		r, err := c.kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
			Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}, metav1.CreateOptions{})
		if err == nil && !r.Status.Allowed {
			err = fmt.Errorf("not allowed: %s", r.Status.Reason)
		}
		res := ra.Resource
		if ra.Group != "" {
			res += "." + ra.Group
		}
		out = append(out, checkResult{name: "can " + ra.Verb + " " + res, err: err})
	}
	nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err == nil {
		var notReady []string
		for _, n := range nodes.Items {
			if !nodeReady(&n) {
				notReady = append(notReady, n.Name)
			}
		}
		if len(nodes.Items) == 0 {
			err = fmt.Errorf("no nodes")
		} else if len(notReady) > 0 {
			err = fmt.Errorf("not Ready: %s", strings.Join(notReady, ", "))
		}
	}
	out = append(out, checkResult{name: "every node is Ready", err: err})
	_, err = c.kube.AppsV1().Deployments(systemNamespace).Get(ctx, controllerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		err = nil
	case err == nil:
		err = fmt.Errorf("deployment %s/%s exists: ambit is installed already (install again to update it)", systemNamespace, controllerName)
	}
	out = append(out, checkResult{name: "ambit is not installed yet", err: err, warn: true})
	return out
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// gatewayChannelCheck warns when the HTTPRoute CRD is the Gateway API's standard channel: the
// API server then prunes a rule's retry, which ambit reads (deploy/crds/gateway-api/README.md).
func gatewayChannelCheck(ctx context.Context, c *cluster, crds schema.GroupVersionResource) checkResult {
	const name = "Gateway API CRDs are the experimental channel (HTTPRoute retry is kept)"
	u, err := c.dyn.Resource(crds).Get(ctx, "httproutes.gateway.networking.k8s.io", metav1.GetOptions{})
	if err != nil {
		return checkResult{name: name, err: err, warn: true}
	}
	if ch := u.GetAnnotations()["gateway.networking.k8s.io/channel"]; ch != "experimental" {
		return checkResult{name: name, err: fmt.Errorf("the HTTPRoute CRD is the %q channel: the API server drops an HTTPRoute's retry; ambitctl install applies the experimental one", ch), warn: true}
	}
	return checkResult{name: name}
}

func installChecks(ctx context.Context, c *cluster) []checkResult {
	var out []checkResult
	objs, err := manifests.Objects(manifests.Options{})
	if err != nil {
		return []checkResult{{name: "manifests", err: err}}
	}
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var missing []string
	n := 0
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		n++
		u, err := c.dyn.Resource(gvr).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil || !crdEstablished(u) {
			missing = append(missing, o.GetName())
		}
	}
	var crdErr error
	if len(missing) > 0 {
		crdErr = fmt.Errorf("missing or not Established: %s", strings.Join(missing, ", "))
	}
	out = append(out, checkResult{name: fmt.Sprintf("%d CRDs are Established", n), err: crdErr})
	if crdErr == nil {
		out = append(out, gatewayChannelCheck(ctx, c, gvr))
	}

	d, err := c.kube.AppsV1().Deployments(systemNamespace).Get(ctx, controllerName, metav1.GetOptions{})
	if err == nil {
		if s := deploymentStatus(d.Status.ObservedGeneration, d.Generation, d.Status.UpdatedReplicas, d.Status.AvailableReplicas, d.Status.Replicas); s != "" {
			err = fmt.Errorf("%s", s)
		}
	}
	out = append(out, checkResult{name: "controller is available", err: err})
	for _, ds := range []struct{ name, what string }{{ztunnelName, "ztunnel"}, {nodeAgentName, "node agent"}} {
		out = append(out, checkResult{name: ds.what + " is ready on every node", err: daemonSetReadyOnNodes(ctx, c, ds.name)})
	}
	return out
}

// daemonSetReadyOnNodes checks a DaemonSet's status and that every schedulable node has a
// Ready pod of it, naming the nodes that do not.
func daemonSetReadyOnNodes(ctx context.Context, c *cluster, name string) error {
	d, err := c.kube.AppsV1().DaemonSets(systemNamespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pods, err := c.kube.CoreV1().Pods(systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + name})
	if err != nil {
		return err
	}
	nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	ready := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			ready[p.Spec.NodeName] = true
		}
	}
	var without []string
	for _, n := range nodes.Items {
		if !n.Spec.Unschedulable && !ready[n.Name] {
			without = append(without, n.Name)
		}
	}
	if len(without) > 0 {
		return fmt.Errorf("no Ready pod on %s", strings.Join(without, ", "))
	}
	if s := daemonSetStatus(d.Status.ObservedGeneration, d.Generation, d.Status.DesiredNumberScheduled, d.Status.UpdatedNumberScheduled, d.Status.NumberReady, d.Status.NumberAvailable); s != "" {
		return fmt.Errorf("%s", s)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func certChecks(ctx context.Context, c *cluster, now time.Time) []checkResult {
	var out []checkResult
	cm, err := c.kube.CoreV1().ConfigMaps(systemNamespace).Get(ctx, rootCertCM, metav1.GetOptions{})
	if err != nil {
		return []checkResult{{name: "mesh root certificate is published", err: err}}
	}
	root := []byte(cm.Data["root-cert.pem"])
	cert, err := parseCert(root)
	out = append(out, checkResult{name: "mesh root certificate is published", err: err})
	if err != nil {
		return out
	}
	var verr error
	switch {
	case now.Before(cert.NotBefore):
		verr = fmt.Errorf("not valid before %s", cert.NotBefore.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		verr = fmt.Errorf("expired on %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	out = append(out, checkResult{name: fmt.Sprintf("mesh root certificate is valid (until %s, %d days)",
		cert.NotAfter.UTC().Format("2006-01-02"), int(cert.NotAfter.Sub(now).Hours()/24)), err: verr})
	if verr == nil && cert.NotAfter.Sub(now) < 60*24*time.Hour {
		out = append(out, checkResult{name: "mesh root certificate is not about to expire", err: fmt.Errorf("expires in less than 60 days"), warn: true})
	}
	sec, err := c.kube.CoreV1().Secrets(systemNamespace).Get(ctx, caSecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsForbidden(err):
		out = append(out, checkResult{name: "ztunnel's root is the controller's", err: fmt.Errorf("cannot read secret %s/%s: %v", systemNamespace, caSecretName, err), warn: true})
	case err != nil:
		out = append(out, checkResult{name: "ztunnel's root is the controller's", err: err})
	default:
		want, err := secretBundle(sec)
		switch {
		case err != nil:
			out = append(out, checkResult{name: "ztunnel's root is the controller's", err: fmt.Errorf("secret %s: %w", caSecretName, err)})
		case string(want) != string(root):
			out = append(out, checkResult{name: "ztunnel's root is the controller's", err: fmt.Errorf("configmap %s differs from the roots of secret %s: run ambitctl install again", rootCertCM, caSecretName)})
		default:
			out = append(out, checkResult{name: "ztunnel's root is the controller's"})
		}
	}
	return out
}

// enrolled is the controller's enrolment rule: the pod's own dataplane-mode label wins over
// its namespace's; ambit's label wins over Istio's alias.
func enrolled(podLabels, nsLabels map[string]string) bool {
	mode := func(l map[string]string) (string, bool) {
		if v, ok := l[model.LabelDataplaneMode]; ok {
			return v, true
		}
		v, ok := l[model.LabelIstioDataplaneMode]
		return v, ok
	}
	if v, ok := mode(podLabels); ok {
		return v == model.ModeAmbient
	}
	v, _ := mode(nsLabels)
	return v == model.ModeAmbient
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// dataplaneChecks finds every running pod of an enrolled namespace (or enrolled itself) and
// asks its node's agent which pods the node's ztunnel holds.
func dataplaneChecks(ctx context.Context, c *cluster) []checkResult {
	nss, err := c.kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return []checkResult{{name: "pods of enrolled namespaces are captured", err: err}}
	}
	nsLabels := map[string]map[string]string{}
	for _, ns := range nss.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	pods, err := c.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "status.phase=Running"})
	if err != nil {
		return []checkResult{{name: "pods of enrolled namespaces are captured", err: err}}
	}
	agents, err := c.kube.CoreV1().Pods(systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + nodeAgentName})
	if err != nil {
		return []checkResult{{name: "pods of enrolled namespaces are captured", err: err}}
	}
	agentOf := map[string]string{}
	for _, a := range agents.Items {
		if a.DeletionTimestamp == nil && podReady(&a) {
			agentOf[a.Spec.NodeName] = a.Name
		}
	}
	held := map[string]map[string]nodeapi.PodStatus{} // node → uid → status
	var problems []string
	count := 0
	for _, p := range pods.Items {
		if p.Spec.HostNetwork || p.DeletionTimestamp != nil || !enrolled(p.Labels, nsLabels[p.Namespace]) {
			continue
		}
		count++
		node := p.Spec.NodeName
		if _, ok := held[node]; !ok {
			held[node] = map[string]nodeapi.PodStatus{}
			agent := agentOf[node]
			if agent == "" {
				problems = append(problems, "node "+node+": no ready node agent to ask")
				continue
			}
			b, err := c.kube.CoreV1().Pods(systemNamespace).ProxyGet("http", agent, "15022", "/pods", nil).DoRaw(ctx)
			if err != nil {
				problems = append(problems, "node "+node+": "+err.Error())
				continue
			}
			var list []nodeapi.PodStatus
			if err := json.Unmarshal(b, &list); err != nil {
				problems = append(problems, "node "+node+": "+err.Error())
				continue
			}
			for _, s := range list {
				held[node][s.UID] = s
			}
		}
		s, ok := held[node][model.WorkloadUID(model.DefaultCluster, p.Namespace, p.Name)]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("pod %s/%s on %s: not registered with ztunnel", p.Namespace, p.Name, node))
		case !s.Captured:
			problems = append(problems, fmt.Sprintf("pod %s/%s on %s: not captured: %s", p.Namespace, p.Name, node, s.Reason))
		}
	}
	var perr error
	if len(problems) > 0 {
		perr = fmt.Errorf("%s", strings.Join(problems, "\n    "))
	}
	return []checkResult{{name: fmt.Sprintf("%d running pods of enrolled namespaces are captured", count), err: perr}}
}
