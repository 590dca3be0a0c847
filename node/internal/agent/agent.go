// Package agent is ambit's node agent, one per node (a DaemonSet). It installs the CNI plugin
// (package cniplugin) — its binary into the host's CNI bin dir, an entry at the end of the
// host's primary network config, and a kubeconfig the plugin reads labels with — and keeps
// them in place; it registers with the node's ztunnel every enrolled pod that runs on the node
// without having gone through the plugin (pods started before the agent, or before their
// namespace was enrolled), finding their network namespaces through /proc. On termination it
// removes what it installed; when its DaemonSet is being deleted (an uninstall) it also hands
// every pod back from ztunnel, which removes their capture rules.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"ambit.dev/node/internal/cniplugin"
	"ambit.dev/node/internal/enrol"
	"ambit.dev/proto/nodeapi"
)

// Config is the agent's configuration; cmd/ambit-node-agent fills it from flags.
type Config struct {
	Node string
	// Namespace and DaemonSet name the agent's own DaemonSet, whose deletion means uninstall.
	Namespace, DaemonSet string
	// CNIBinDir and CNIConfDir are the host's CNI directories (mounted at the same paths).
	CNIBinDir, CNIConfDir string
	// PluginBinary is the file copied to CNIBinDir/ambit-cni (the agent's own executable).
	PluginBinary string
	// NodeAPI is ztunnel's node API socket, the same path on the host and here.
	NodeAPI string
	// NetnsDir is where the runtime keeps the pods' network namespace files; ProcRoot the
	// host's /proc.
	NetnsDir, ProcRoot string
	// ExcludeNamespaces are never enrolled by the plugin.
	ExcludeNamespaces []string
	// Server, CAFile and TokenFile are what the plugin's kubeconfig holds: the API server as
	// the node reaches it, its CA, the agent's ServiceAccount token (re-read as it rotates).
	Server, CAFile, TokenFile string
	// ReadyAddr serves /ready (200 once the plugin is installed) and /pods (what the node's
	// ztunnel holds). Empty: not served.
	ReadyAddr string
	// Resync is how often everything is checked again without an event; default 10 s.
	Resync time.Duration
	Client kubernetes.Interface
	Logger *slog.Logger
}

type agent struct {
	cfg   Config
	log   *slog.Logger
	ztun  *nodeapi.Client
	pods  cache.Indexer
	nss   cache.Indexer
	kick  chan struct{}
	ready atomic.Bool // the plugin is installed
}

// Run installs the plugin and keeps the node's pods registered until ctx ends, then removes
// the plugin (and, on uninstall, releases the pods).
func Run(ctx context.Context, cfg Config) error {
	if cfg.Node == "" {
		return errors.New("node agent: --node (NODE_NAME) is required")
	}
	if cfg.Resync == 0 {
		cfg.Resync = 10 * time.Second
	}
	a := &agent{cfg: cfg, log: cfg.Logger, ztun: nodeapi.NewClient(cfg.NodeAPI), kick: make(chan struct{}, 1)}

	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {}))
	podFactory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
		}))
	podInf := podFactory.Core().V1().Pods().Informer()
	nsInf := factory.Core().V1().Namespaces().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.trigger() },
		UpdateFunc: func(any, any) { a.trigger() },
		DeleteFunc: func(any) { a.trigger() },
	}
	if _, err := podInf.AddEventHandler(h); err != nil {
		return err
	}
	if _, err := nsInf.AddEventHandler(h); err != nil {
		return err
	}
	a.pods, a.nss = podInf.GetIndexer(), nsInf.GetIndexer()
	stop := make(chan struct{})
	defer close(stop)
	factory.Start(stop)
	podFactory.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced, nsInf.HasSynced) {
		return ctx.Err()
	}

	if cfg.ReadyAddr != "" {
		ln, err := net.Listen("tcp", cfg.ReadyAddr)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
			if !a.ready.Load() {
				http.Error(w, "CNI plugin not installed", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		// The pods the node's ztunnel holds, for `ambitctl check` (through the API server's
		// pod proxy): ztunnel's node API is a unix socket on the node only.
		mux.HandleFunc("GET /pods", func(w http.ResponseWriter, r *http.Request) {
			pods, err := a.ztun.Pods(r.Context())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(pods)
		})
		srv := &http.Server{Handler: mux}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	a.log.Info("node agent started", "node", cfg.Node, "cni_conf_dir", cfg.CNIConfDir, "node_api", cfg.NodeAPI)
	t := time.NewTicker(cfg.Resync)
	defer t.Stop()
	for {
		if err := a.install(); err != nil {
			a.log.Warn("install CNI plugin", "err", err)
		}
		a.reconcile(ctx)
		select {
		case <-ctx.Done():
			return a.shutdown()
		case <-a.kick:
			// A burst of events is one reconciliation.
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		case <-t.C:
		}
	}
}

func (a *agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// install puts the binary, the kubeconfig and the conflist entry in place, writing only what
// changed (the runtime reloads the config on every write).
func (a *agent) install() error {
	c := a.cfg
	if err := copyBinary(c.PluginBinary, c.CNIBinDir); err != nil {
		return err
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	token, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	kc, err := cniplugin.NewKubeconfig(c.Server, ca, string(token)).Marshal()
	if err != nil {
		return err
	}
	kcPath := filepath.Join(c.CNIConfDir, KubeconfigName)
	if !fileEqual(kcPath, kc) {
		if err := writeAtomic(kcPath, kc, 0o600); err != nil {
			return err
		}
	}
	conf, err := primaryConflist(c.CNIConfDir)
	if err != nil {
		return err
	}
	old, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	entry := map[string]any{"type": cniplugin.Type, "kubeconfig": kcPath, "node_api": c.NodeAPI}
	if len(c.ExcludeNamespaces) > 0 {
		entry["exclude_namespaces"] = c.ExcludeNamespaces
	}
	b, changed, err := chain(old, entry)
	if err != nil {
		return fmt.Errorf("%s: %w", conf, err)
	}
	if changed {
		if err := writeAtomic(conf, b, 0o644); err != nil {
			return err
		}
		a.log.Info("CNI plugin chained", "conflist", conf)
	}
	a.ready.Store(true)
	return nil
}

// uninstall removes the conflist entry, then the kubeconfig and the binary.
func (a *agent) uninstall() error {
	c := a.cfg
	var errs []error
	if conf, err := primaryConflist(c.CNIConfDir); err == nil {
		old, err := os.ReadFile(conf)
		if err == nil {
			b, changed, err := unchain(old)
			if err == nil && changed {
				err = writeAtomic(conf, b, 0o644)
			}
			errs = append(errs, err)
		}
	}
	for _, p := range []string{filepath.Join(c.CNIConfDir, KubeconfigName), filepath.Join(c.CNIBinDir, cniplugin.Type)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reconcile registers every enrolled pod of the node that ztunnel does not hold.
func (a *agent) reconcile(ctx context.Context) {
	held, err := a.ztun.Pods(ctx)
	if err != nil {
		a.log.Debug("ztunnel not reachable; pods not reconciled", "err", err)
		return
	}
	have := map[string]bool{}
	for _, p := range held {
		have[p.UID] = true
	}
	var missing []*corev1.Pod
	for _, o := range a.pods.List() {
		pod := o.(*corev1.Pod)
		if pod.Spec.HostNetwork || pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending {
			continue
		}
		if have[enrol.WorkloadUID(pod.Namespace, pod.Name)] || a.excluded(pod.Namespace) {
			continue
		}
		var nsLabels map[string]string
		if o, ok, _ := a.nss.GetByKey(pod.Namespace); ok {
			nsLabels = o.(*corev1.Namespace).Labels
		}
		if enrol.IsAmbient(pod.Labels, nsLabels) {
			missing = append(missing, pod)
		}
	}
	if len(missing) == 0 {
		return
	}
	netns, err := netnsByPodUID(a.cfg.ProcRoot, a.cfg.NetnsDir)
	if err != nil {
		a.log.Warn("find pods' network namespaces", "err", err)
		return
	}
	for _, pod := range missing {
		path, ok := netns[string(pod.UID)]
		if !ok {
			a.log.Debug("pod's network namespace not found yet", "pod", pod.Namespace+"/"+pod.Name)
			continue
		}
		reg := nodeapi.Registration{UID: enrol.WorkloadUID(pod.Namespace, pod.Name), Namespace: pod.Namespace, Name: pod.Name, NetNS: path}
		if err := a.ztun.Add(ctx, reg); err != nil {
			a.log.Warn("register pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			continue
		}
		a.log.Info("pod registered", "pod", pod.Namespace+"/"+pod.Name, "netns", path)
	}
}

func (a *agent) excluded(ns string) bool {
	for _, x := range a.cfg.ExcludeNamespaces {
		if x == ns {
			return true
		}
	}
	return false
}

// shutdown removes the plugin; when the agent's DaemonSet is gone or being deleted, it also
// hands every pod back from ztunnel so that no capture rule stays behind.
func (a *agent) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := a.uninstall()
	a.log.Info("CNI plugin removed", "err", err)
	if !a.uninstalling(ctx) {
		return err
	}
	pods, perr := a.ztun.Pods(ctx)
	if perr != nil {
		a.log.Warn("uninstall: ztunnel not reachable; its pods keep their rules", "err", perr)
		return errors.Join(err, perr)
	}
	for _, p := range pods {
		if rerr := a.ztun.Remove(ctx, p.UID); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	a.log.Info("uninstall: pods released from ztunnel", "pods", len(pods))
	return err
}

func (a *agent) uninstalling(ctx context.Context) bool {
	if a.cfg.DaemonSet == "" {
		return false
	}
	ds, err := a.cfg.Client.AppsV1().DaemonSets(a.cfg.Namespace).Get(ctx, a.cfg.DaemonSet, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true
	}
	return err == nil && ds.DeletionTimestamp != nil
}
