package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"ambit.dev/controller/internal/manifests"
	"ambit.dev/mesh/identity"
)

// The install's fixed names (deploy/).
const (
	systemNamespace = "ambit-system"
	controllerName  = "ambit-controller"
	ztunnelName     = "ztunnel"
	nodeAgentName   = "ambit-node-agent"
	caSecretName    = "ambit-ca"
	rootCertCM      = "ambit-root-cert"
	fieldManager    = "ambitctl"
)

type kubeFlags struct {
	kubeconfig, context string
	timeout             time.Duration
}

func (f *kubeFlags) register(cmd *cobra.Command, timeout time.Duration) {
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().StringVar(&f.context, "context", "", "kubeconfig context (default: the current context)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", timeout, "give up after this long")
}

// cluster is what install, uninstall, check and version use of a cluster.
type cluster struct {
	where  string
	rest   *rest.Config
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.ResettableRESTMapper
}

func (f *kubeFlags) connect() (*cluster, error) {
	rc, where, err := restConfig(f.kubeconfig, f.context)
	if err != nil {
		return nil, err
	}
	c := &cluster{where: where, rest: rc}
	if c.kube, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, err
	}
	if c.dyn, err = dynamic.NewForConfig(rc); err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, err
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return c, nil
}

func (c *cluster) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		c.mapper.Reset()
		if m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return nil, fmt.Errorf("%s: %w", gvk.Kind, err)
		}
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(m.Resource).Namespace(u.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

// apply server-side applies u as ambitctl, taking over fields another manager set.
func (c *cluster) apply(ctx context.Context, u *unstructured.Unstructured) error {
	ri, err := c.resource(u)
	if err != nil {
		return err
	}
	_, err = ri.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("apply %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return nil
}

// installOptions are install's flags.
type installOptions struct {
	kubeFlags
	manifests.Options
	set    []string
	dryRun bool
	output string
}

// applySet applies --set key=value pairs, Helm's way of naming the options.
func (o *installOptions) applySet() error {
	for _, kv := range o.set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("--set %q: want key=value", kv)
		}
		switch k {
		case "image.registry", "image.repository", "hub":
			o.Registry = v
		case "image.tag", "tag":
			o.Tag = v
		case "image.pullPolicy":
			o.PullPolicy = v
		case "trustDomain", "meshConfig.trustDomain":
			o.TrustDomain = v
		case "logLevel", "global.logging.level":
			o.LogLevel = v
		default:
			return fmt.Errorf("--set %s: unknown key; known: image.registry, image.tag, image.pullPolicy, trustDomain, logLevel", k)
		}
	}
	return nil
}

func installCommand(o Options) *cobra.Command {
	var f installOptions
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install ambit into the cluster: CRDs, RBAC, the controller, ztunnel and the node agent",
		Long: `Install ambit into the cluster of the kubeconfig: server-side apply of the manifests of
deploy/ that ambitctl carries (the ambit-system namespace, the CRDs — ambit's and the Gateway
API's —, RBAC, the controller Deployment, the ztunnel and node agent DaemonSets), in that
order, waiting for each part to be ready: the CRDs Established, the controller available,
then ztunnel and the node agent ready on every node. Between the controller and the
DaemonSets it publishes the mesh root certificate (the public half of the Secret ambit-ca the
controller creates) in the ConfigMap ambit-root-cert, which ztunnel mounts.

Running it again applies the same objects: nothing changes unless the options did.`,
		Example: `  ambitctl install
  ambitctl install --set image.registry=registry.example.com/ambit --set image.tag=v0.1.0
  ambitctl install --dry-run -o yaml > ambit.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.applySet(); err != nil {
				return err
			}
			return runInstall(cmd.Context(), cmd.OutOrStdout(), &f, o.Invoked)
		},
	}
	f.kubeFlags.register(cmd, 5*time.Minute)
	fs := cmd.Flags()
	fs.StringVar(&f.Registry, "registry", "ambit", "image registry and path: images are <registry>/<part>:<tag>")
	fs.StringVar(&f.Tag, "tag", "dev", "image tag")
	fs.StringVar(&f.PullPolicy, "image-pull-policy", "", "imagePullPolicy of every container (default: the manifests' IfNotPresent)")
	fs.StringVar(&f.TrustDomain, "trust-domain", "", "SPIFFE trust domain of the mesh (default cluster.local)")
	fs.StringVar(&f.LogLevel, "log-level", "", "log level of the controller, ztunnel and the node agent: debug, info, warn, error")
	fs.StringArrayVar(&f.set, "set", nil, "an option as key=value: image.registry, image.tag, image.pullPolicy, trustDomain, logLevel (repeatable)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print what would be applied instead of applying it (with -o yaml)")
	fs.StringVarP(&f.output, "output", "o", "", "with --dry-run: yaml (the manifests) or name (one kind/name a line)")
	return cmd
}

func runInstall(ctx context.Context, w io.Writer, f *installOptions, invoked string) error {
	objs, err := manifests.Objects(f.Options)
	if err != nil {
		return err
	}
	if f.dryRun {
		for _, obj := range objs {
			switch f.output {
			case "yaml", "":
				b, err := yaml.Marshal(obj.Object)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "---\n# %s\n%s", obj.File, b)
			case "name":
				fmt.Fprintf(w, "%s/%s\n", strings.ToLower(obj.GetKind()), obj.GetName())
			default:
				return fmt.Errorf("-o %s: want yaml or name", f.output)
			}
		}
		return nil
	}
	c, err := f.connect()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	begin := time.Now()
	fmt.Fprintf(w, "Installing ambit into %s\n", c.where)
	step := func(what string, fn func() error) error {
		t := time.Now()
		if err := fn(); err != nil {
			fmt.Fprintf(w, "✘ %s: %v\n", what, err)
			return err
		}
		fmt.Fprintf(w, "✔ %s (%s)\n", what, time.Since(t).Round(100*time.Millisecond))
		return nil
	}
	applyPart := func(part manifests.Component) error {
		for _, obj := range objs {
			if obj.Component == part {
				if err := c.apply(ctx, obj.Unstructured); err != nil {
					return err
				}
			}
		}
		return nil
	}
	var crds []string
	for _, obj := range objs {
		if obj.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, obj.GetName())
		}
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"namespace and CRDs applied", func() error { return applyPart(manifests.Base) }},
		{fmt.Sprintf("%d CRDs Established", len(crds)), func() error { return waitCRDs(ctx, c, crds) }},
		{"controller RBAC, Service and Deployment applied", func() error { return applyPart(manifests.Controller) }},
		{"controller available", func() error { return waitDeployment(ctx, c.kube, systemNamespace, controllerName) }},
		{"mesh root certificate published (ConfigMap " + rootCertCM + ")", func() error { return publishRoot(ctx, c) }},
		{"ztunnel and node agent applied", func() error { return applyPart(manifests.Node) }},
		{"ztunnel ready on every node", func() error { return waitDaemonSet(ctx, c.kube, systemNamespace, ztunnelName) }},
		{"node agent ready on every node", func() error { return waitDaemonSet(ctx, c.kube, systemNamespace, nodeAgentName) }},
	}
	for _, s := range steps {
		if err := step(s.what, s.fn); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "ambit installed in %s. Enrol a namespace: %s namespace enable <namespace>\n", time.Since(begin).Round(100*time.Millisecond), invoked)
	return nil
}

// publishRoot copies the trust bundle of the CA Secret (created by the controller on its first
// start) into the ConfigMap ztunnel mounts as --root-cert: its root-cert.pem, and while the root
// rotates, the root of its ca-cert.pem and its extra-roots.pem (docs/operations.md).
func publishRoot(ctx context.Context, c *cluster) error {
	var sec *corev1.Secret
	err := poll(ctx, func() (bool, error) {
		var err error
		sec, err = c.kube.CoreV1().Secrets(systemNamespace).Get(ctx, caSecretName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("secret %s/%s: %w", systemNamespace, caSecretName, err)
	}
	root, err := secretBundle(sec)
	if err != nil {
		return fmt.Errorf("secret %s/%s: %w", systemNamespace, caSecretName, err)
	}
	cm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": rootCertCM, "namespace": systemNamespace,
			"labels": map[string]any{"app.kubernetes.io/part-of": "ambit"}},
		"data": map[string]any{"root-cert.pem": string(root)},
	}}
	return c.apply(ctx, cm)
}

// secretBundle is the trust bundle of the CA Secret: the roots the controller sends proxies.
func secretBundle(sec *corev1.Secret) ([]byte, error) {
	d := sec.Data
	return identity.BundlePEM(identity.CAFiles{RootCert: d["root-cert.pem"], CACert: d["ca-cert.pem"],
		CertChain: d["cert-chain.pem"], ExtraRoots: d["extra-roots.pem"]})
}

// poll calls fn every 500 ms until it is done or fails, or ctx ends.
func poll(ctx context.Context, fn func() (bool, error)) error {
	for {
		done, err := fn()
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func waitCRDs(ctx context.Context, c *cluster, names []string) error {
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, n := range names {
		err := poll(ctx, func() (bool, error) {
			u, err := c.dyn.Resource(gvr).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return crdEstablished(u), nil
		})
		if err != nil {
			return fmt.Errorf("crd %s: %w", n, err)
		}
	}
	c.mapper.Reset()
	return nil
}

func crdEstablished(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, cond := range conds {
		m, _ := cond.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

func waitDeployment(ctx context.Context, kube kubernetes.Interface, ns, name string) error {
	var last string
	err := poll(ctx, func() (bool, error) {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = deploymentStatus(d.Status.ObservedGeneration, d.Generation, d.Status.UpdatedReplicas, d.Status.AvailableReplicas, d.Status.Replicas)
		return last == "", nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w (%s)", err, last)
	}
	return err
}

// deploymentStatus is "" when a Deployment has rolled out and is available, else why not.
func deploymentStatus(observed, gen int64, updated, available, replicas int32) string {
	switch {
	case observed < gen:
		return "the rollout is not observed yet"
	case available < 1 || updated < replicas || available < replicas:
		return fmt.Sprintf("%d of %d replicas updated, %d available", updated, replicas, available)
	}
	return ""
}

func waitDaemonSet(ctx context.Context, kube kubernetes.Interface, ns, name string) error {
	var last string
	err := poll(ctx, func() (bool, error) {
		d, err := kube.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = daemonSetStatus(d.Status.ObservedGeneration, d.Generation, d.Status.DesiredNumberScheduled, d.Status.UpdatedNumberScheduled, d.Status.NumberReady, d.Status.NumberAvailable)
		if last == "" {
			return true, nil
		}
		return false, podsFailing(ctx, kube, ns, "app.kubernetes.io/name="+name)
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w (%s)", err, last)
	}
	return err
}

// daemonSetStatus is "" when a DaemonSet runs an updated, ready pod on every node it wants.
func daemonSetStatus(observed, gen int64, desired, updated, ready, available int32) string {
	switch {
	case observed < gen:
		return "the rollout is not observed yet"
	case desired == 0:
		return "no node to run on"
	case updated < desired || ready < desired || available < desired:
		return fmt.Sprintf("%d nodes: %d updated, %d ready", desired, updated, ready)
	}
	return ""
}

// podsFailing returns an error naming the first pod of selector that cannot start: it will
// not get better by waiting.
func podsFailing(ctx context.Context, kube kubernetes.Interface, ns, selector string) error {
	pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil
	}
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil {
				switch w.Reason {
				case "CreateContainerError", "ErrImageNeverPull", "InvalidImageName", "ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "RunContainerError":
					return fmt.Errorf("pod %s on %s: container %s: %s: %s", p.Name, p.Spec.NodeName, cs.Name, w.Reason, w.Message)
				}
			}
		}
	}
	return nil
}

func uninstallCommand(o Options) *cobra.Command {
	var f kubeFlags
	var crds bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove ambit from the cluster: no capture rule in any pod, no CNI config left",
		Long: `Remove ambit from the cluster of the kubeconfig, in the order that leaves nothing behind:
first the node agent, which on its way out hands every pod back from ztunnel (ztunnel removes
their capture rules) and removes the CNI plugin, its config entry and kubeconfig from every
node; then ztunnel; then the controller, its RBAC and the root certificate's ConfigMap.

What stays: the ambit-system namespace with the CA Secret ambit-ca (a reinstall keeps the
mesh's root; delete the namespace to drop it), the namespaces' enrolment labels, the
waypoints of ambit-waypoint Gateways (delete the Gateways), and the CRDs with everyone's
policies — unless --crds, which deletes the CRDs and every object of theirs.`,
		Example: `  ambitctl uninstall
  ambitctl uninstall --crds`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUninstall(cmd.Context(), cmd.OutOrStdout(), &f, crds)
		},
	}
	f.register(cmd, 3*time.Minute)
	cmd.Flags().BoolVar(&crds, "crds", false, "delete the CRDs too (ambit's and the Gateway API's), with every object of theirs")
	return cmd
}

func runUninstall(ctx context.Context, w io.Writer, f *kubeFlags, crds bool) error {
	objs, err := manifests.Objects(manifests.Options{})
	if err != nil {
		return err
	}
	c, err := f.connect()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	begin := time.Now()
	fmt.Fprintf(w, "Removing ambit from %s\n", c.where)
	fg := metav1.DeletePropagationForeground
	del := func(u *unstructured.Unstructured) error {
		ri, err := c.resource(u)
		if meta.IsNoMatchError(errors.Unwrap(err)) || meta.IsNoMatchError(err) {
			return nil // its CRD is gone already
		}
		if err != nil {
			return err
		}
		err = ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{PropagationPolicy: &fg})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s %s: %w", u.GetKind(), u.GetName(), err)
		}
		return nil
	}
	find := func(kind, name string) *unstructured.Unstructured {
		for _, o := range objs {
			if o.GetKind() == kind && o.GetName() == name {
				return o.Unstructured
			}
		}
		return nil
	}
	// The DaemonSets first, each waited for: the agent needs ztunnel to release the pods.
	for _, name := range []string{nodeAgentName, ztunnelName} {
		t := time.Now()
		if err := del(find("DaemonSet", name)); err != nil {
			return err
		}
		if err := waitPodsGone(ctx, c.kube, systemNamespace, "app.kubernetes.io/name="+name); err != nil {
			return fmt.Errorf("DaemonSet %s: %w", name, err)
		}
		fmt.Fprintf(w, "✔ DaemonSet %s and its pods deleted (%s)\n", name, time.Since(t).Round(100*time.Millisecond))
	}
	cm := &unstructured.Unstructured{}
	cm.SetAPIVersion("v1")
	cm.SetKind("ConfigMap")
	cm.SetNamespace(systemNamespace)
	cm.SetName(rootCertCM)
	rest := []*unstructured.Unstructured{cm}
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		switch {
		case o.GetKind() == "DaemonSet", o.GetKind() == "Namespace":
		case o.GetKind() == "CustomResourceDefinition" && !crds:
		default:
			rest = append(rest, o.Unstructured)
		}
	}
	t := time.Now()
	n := 0
	for _, u := range rest {
		if err := del(u); err != nil {
			return err
		}
		n++
	}
	if err := waitPodsGone(ctx, c.kube, systemNamespace, "app.kubernetes.io/name="+controllerName); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	fmt.Fprintf(w, "✔ controller, RBAC and %d other objects deleted (%s)\n", n, time.Since(t).Round(100*time.Millisecond))
	if !crds {
		fmt.Fprintln(w, "  kept: the CRDs (--crds deletes them), the namespace ambit-system with the CA Secret ambit-ca")
	}
	fmt.Fprintf(w, "ambit removed in %s\n", time.Since(begin).Round(100*time.Millisecond))
	return nil
}

func waitPodsGone(ctx context.Context, kube kubernetes.Interface, ns, selector string) error {
	var left int
	err := poll(ctx, func() (bool, error) {
		l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		left = len(l.Items)
		return left == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%d pods still there: %w", left, err)
	}
	return nil
}
