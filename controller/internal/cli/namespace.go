package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/controller/internal/model"
)

const enrolLabel = model.LabelDataplaneMode + "=" + model.ModeAmbient

type namespaceFlags struct {
	kubeconfig, context, configDir string
	lab                            labFlags
	timeout                        time.Duration
}

func namespaceCommand(o Options) *cobra.Command {
	var f namespaceFlags
	cmd := &cobra.Command{
		Use:     "namespace",
		Aliases: []string{"ns"},
		Short:   "Enrol a namespace in the mesh, or take it out",
		Long: `Enrol a namespace in the mesh, or take it out, by setting or removing the label
` + enrolLabel + ` on the Namespace. Pods of an enrolled namespace are captured by their
node's ztunnel (a pod's own ` + model.LabelDataplaneMode + ` label wins over its namespace's).

Where the Namespace lives:
  --kubeconfig FILE   a Kubernetes cluster (default: $KUBECONFIG, then ~/.kube/config)
  --config-dir DIR    the folder of YAML a controller reads in local mode; the file holding
                      the Namespace is edited in place (other documents and comments are
                      kept), or DIR/namespace-<ns>.yaml is created
  --lab               the running local lab's config folder; the default when neither of
                      the above is given and a lab is up (--lab-dir, default /run/ambit-lab)

Both commands are idempotent: enabling an enrolled namespace changes nothing and says so.`,
		Example: `  ambitctl namespace enable shop
  ambitctl namespace disable shop --config-dir examples/lab-config
  ambitctl ns enable demo --lab`,
	}
	f.register(cmd)
	requireSubcommand(cmd)
	cmd.AddCommand(
		namespaceSetCommand(o, &f, true),
		namespaceSetCommand(o, &f, false),
	)
	return cmd
}

func (f *namespaceFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	pf.StringVar(&f.context, "context", "", "kubeconfig context (default: the current context)")
	pf.StringVar(&f.configDir, "config-dir", "", "folder of YAML read by a controller in local mode (--config-dir of the controller)")
	pf.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up on the Kubernetes API after this long")
	f.lab.register(cmd, true, "config folder")
}

func namespaceSetCommand(o Options, f *namespaceFlags, enable bool) *cobra.Command {
	use, short, example := "enable NAMESPACE", "Enrol a namespace: label it "+enrolLabel, `  # in the cluster of the current kubeconfig context
  ambitctl namespace enable shop

  # in a controller's config folder (controller --config-dir examples/lab-config)
  ambitctl namespace enable shop --config-dir examples/lab-config

  # in the running local lab (its config folder; --lab is implied when a lab is up)
  ambitctl namespace enable demo --lab`
	if !enable {
		use, short, example = "disable NAMESPACE", "Take a namespace out of the mesh: remove the "+model.LabelDataplaneMode+" label", `  ambitctl namespace disable shop
  ambitctl namespace disable shop --config-dir examples/lab-config
  ambitctl namespace disable demo --lab`
	}
	return &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.run(cmd.Context(), o, cmd.OutOrStdout(), args[0], enable)
		},
	}
}

func (f *namespaceFlags) run(ctx context.Context, o Options, w io.Writer, ns string, enable bool) error {
	set := 0
	for _, b := range []bool{f.kubeconfig != "", f.configDir != "", f.lab.use} {
		if b {
			set++
		}
	}
	if set > 1 {
		return errors.New("--kubeconfig, --config-dir and --lab are mutually exclusive: pick where the Namespace lives")
	}
	dir := f.configDir
	if dir == "" && f.kubeconfig == "" {
		st, err := f.lab.state(f.context == "")
		if err != nil {
			return err
		}
		if st != nil {
			if st.ConfigDir == "" {
				return fmt.Errorf("lab %q records no config dir in %s/state.json", st.Name, f.lab.dir)
			}
			dir = st.ConfigDir
		}
	}
	if dir != "" {
		return folderNamespace(w, dir, ns, enable)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	c, where, err := o.NewKube(f.kubeconfig, f.context)
	if err != nil {
		return err
	}
	return kubeNamespace(ctx, w, c, where, ns, enable)
}

func folderNamespace(w io.Writer, dir, ns string, enable bool) error {
	var res configdir.Result
	var err error
	if enable {
		res, err = configdir.SetNamespaceLabel(dir, ns, model.LabelDataplaneMode, model.ModeAmbient)
	} else {
		res, err = configdir.RemoveNamespaceLabel(dir, ns, model.LabelDataplaneMode)
	}
	if err != nil {
		return err
	}
	files := strings.Join(res.Files, ", ")
	switch {
	case enable && res.Created:
		fmt.Fprintf(w, "namespace %q enrolled (%s): no Namespace was defined in %s, wrote %s\n", ns, enrolLabel, dir, files)
	case enable && res.Changed:
		fmt.Fprintf(w, "namespace %q enrolled (%s) in %s\n", ns, enrolLabel, files)
	case enable:
		fmt.Fprintf(w, "namespace %q is already enrolled (%s) in %s; nothing changed\n", ns, enrolLabel, files)
	case res.Changed:
		fmt.Fprintf(w, "namespace %q taken out of the mesh (label %s removed) in %s\n", ns, model.LabelDataplaneMode, files)
	case len(res.Files) == 0:
		fmt.Fprintf(w, "namespace %q is not enrolled: no Namespace is defined in %s; nothing changed\n", ns, dir)
	default:
		fmt.Fprintf(w, "namespace %q is not enrolled (no %s label) in %s; nothing changed\n", ns, model.LabelDataplaneMode, files)
	}
	if len(res.Files) > 1 {
		fmt.Fprintf(w, "warning: namespace %q is defined in %d files; the controller uses the first, %s, and logs the others as duplicates\n", ns, len(res.Files), res.Files[0])
	}
	return nil
}

func kubeNamespace(ctx context.Context, w io.Writer, c kubernetes.Interface, where, ns string, enable bool) error {
	cur, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("namespace %q does not exist in %s (create it first: kubectl create namespace %s)", ns, where, ns)
	}
	var status apierrors.APIStatus
	if err != nil && !errors.As(err, &status) {
		return fmt.Errorf("cannot reach the Kubernetes API of %s: %s — is the cluster up, and is this the right kubeconfig and context?", where, cause(err))
	}
	if err != nil {
		return fmt.Errorf("get namespace %q in %s: %w", ns, where, err)
	}
	v, has := cur.Labels[model.LabelDataplaneMode]
	if enable && has && v == model.ModeAmbient {
		fmt.Fprintf(w, "namespace %q is already enrolled (%s) in %s; nothing changed\n", ns, enrolLabel, where)
		return nil
	}
	if !enable && !has {
		fmt.Fprintf(w, "namespace %q is not enrolled (no %s label) in %s; nothing changed\n", ns, model.LabelDataplaneMode, where)
		return nil
	}
	value := "null"
	if enable {
		value = strconv.Quote(model.ModeAmbient)
	}
	// A merge patch touches only this label, and carries the resourceVersion we read, so a
	// concurrent change to the Namespace makes it fail instead of being overwritten blindly.
	patch := fmt.Sprintf(`{"metadata":{"resourceVersion":%q,"labels":{%q:%s}}}`, cur.ResourceVersion, model.LabelDataplaneMode, value)
	if _, err := c.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return fmt.Errorf("label namespace %q in %s: it changed while we were labelling it; run the command again", ns, where)
		}
		return fmt.Errorf("label namespace %q in %s: %w", ns, where, err)
	}
	if enable {
		fmt.Fprintf(w, "namespace %q enrolled (%s) in %s\n", ns, enrolLabel, where)
	} else {
		fmt.Fprintf(w, "namespace %q taken out of the mesh (label %s removed) in %s\n", ns, model.LabelDataplaneMode, where)
	}
	return nil
}

// restConfig loads a client config the way kubectl does: an explicit --kubeconfig, else
// $KUBECONFIG (a list of files), else ~/.kube/config; --context picks a context. where
// describes the cluster for messages.
func restConfig(kubeconfig, context string) (rc *rest.Config, where string, err error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	rc, err = cc.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, "", errors.New("no Kubernetes configuration: pass --kubeconfig, set $KUBECONFIG or write ~/.kube/config; for a config folder use --config-dir, for the local lab --lab")
		}
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	rc.UserAgent = "ambitctl"
	where = "the cluster at " + rc.Host
	if raw, err := cc.RawConfig(); err == nil {
		name := context
		if name == "" {
			name = raw.CurrentContext
		}
		if name != "" {
			where = fmt.Sprintf("cluster %s (context %s)", rc.Host, name)
		}
	}
	return rc, where, nil
}

// newKube builds a Kubernetes client from the kubeconfig (see restConfig).
func newKube(kubeconfig, context string) (kubernetes.Interface, string, error) {
	rc, where, err := restConfig(kubeconfig, context)
	if err != nil {
		return nil, "", err
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes client: %w", err)
	}
	return c, where, nil
}

// newGateway builds a Gateway API client from the kubeconfig (see restConfig).
func newGateway(kubeconfig, context string) (gatewayclient.Interface, error) {
	rc, _, err := restConfig(kubeconfig, context)
	if err != nil {
		return nil, err
	}
	c, err := gatewayclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("gateway API client: %w", err)
	}
	return c, nil
}
