// Package kubetest runs a real Kubernetes control plane for end-to-end tests: Debian's etcd and
// a kube-apiserver built from the k8s.io/kubernetes Go module (`make kube-apiserver`), both on
// random loopback ports, with RBAC authorization, ServiceAccount tokens (TokenRequest and
// TokenReview work) and the CRDs of deploy/crds applied and established.
//
//	func TestSomething(t *testing.T) {
//		c := kubetest.Start(t)           // fails the test if the binaries are missing
//		c.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
//		cfg := c.ClientAs("ambit-system", "ambit-controller") // least privilege
//	}
//
// Each Start is a fresh cluster of its own (a few seconds); processes stop when the test ends.
// There is no kube-controller-manager, scheduler or kubelet: pods stay where a test puts them
// (set spec.nodeName and the status yourself), deleted namespaces stay Terminating (use fresh
// names), nothing is garbage-collected. The one controller's job the harness does itself is the
// "default" ServiceAccount of every namespace, which pod admission requires. The first create
// of a custom resource within 2 s of its CRD becoming Established takes those 2 s (the API
// server's own delay, for HA), so the first AuthorizationPolicy of a test may be slow.
//
// StartWith takes Options: the address and port the API server listens on, its scratch
// directory, flags to add or replace, and a hook that sees every process start; the cluster
// harness on a real kubelet (controller/internal/clustertest) is built on it. Stop ends the
// processes before the test does.
//
// Binaries: kube-apiserver from $AMBIT_KUBE_APISERVER or <repo>/.cache/bin/kube-apiserver;
// etcd from $AMBIT_ETCD, $PATH or /usr/bin/etcd (Debian's etcd-server, `make setup`).
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// Issuer is the ServiceAccount token issuer of every test cluster; it is also the default
	// (and only) API audience, so a token from TokenFor is accepted by the API server and by a
	// TokenReview without audiences.
	Issuer = "https://kubernetes.default.svc.cluster.local"

	// StartTimeout bounds the start of etcd plus kube-apiserver until /readyz answers.
	StartTimeout = 60 * time.Second

	// ServiceCIDR is the range ClusterIPs are allocated from.
	ServiceCIDR = "10.96.0.0/16"
)

// Cluster is a running etcd and kube-apiserver. The exported clients act as a cluster admin
// (group system:masters); use ClientAs for a least-privilege client.
type Cluster struct {
	// Config is the admin client's configuration (client certificate, verified server).
	Config *rest.Config
	// Client and Dynamic are admin clients built from Config.
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Root is the repository root (the directory with go.work), where deploy/ lives.
	Root string
	// Dir is the cluster's scratch directory (certificates, logs, etcd data); removed at the end.
	Dir string
	// APIServerLog is the path of kube-apiserver's combined output.
	APIServerLog string

	t      testing.TB
	opts   Options
	pki    *pki
	mapper *mapper

	mu      sync.Mutex
	stops   []func() // in start order; Stop runs them backwards
	stopped bool
}

// Options change how StartWith starts the control plane; the zero value is what Start does.
type Options struct {
	// Dir is the scratch directory (certificates, logs, etcd data); default t.TempDir().
	Dir string
	// Address is the IP the API server binds and advertises; default 127.0.0.1. Its serving
	// certificate names it, and the kubernetes Service's ClusterIP.
	Address string
	// Port is the API server's port; default a free one.
	Port int
	// ServiceCIDR is the range of ClusterIPs; default ServiceCIDR.
	ServiceCIDR string
	// APIServerArgs are added to kube-apiserver's flags; one of the form --name=value replaces
	// the default flag of that name (e.g. --authorization-mode=Node,RBAC,
	// --endpoint-reconciler-type=lease).
	APIServerArgs []string
	// Started, if set, is called with the name and pid of each process right after it started
	// (etcd, kube-apiserver).
	Started func(name string, pid int)
}

func (o Options) withDefaults(t testing.TB) Options {
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Address == "" {
		o.Address = "127.0.0.1"
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = ServiceCIDR
	}
	return o
}

// Start starts etcd and kube-apiserver, waits until the API server is ready, and applies and
// waits for every CRD under deploy/crds. It fails the test (never skips) when a binary is
// missing or the cluster does not come up within StartTimeout; everything it started is
// stopped by t.Cleanup.
func Start(t testing.TB) *Cluster {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Cluster {
	t.Helper()
	c, err := start(t, o.withDefaults(t))
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return c
}

func start(t testing.TB, o Options) (*Cluster, error) {
	begin := time.Now()
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	apiserverBin, etcdBin, err := binaries(root)
	if err != nil {
		return nil, err
	}
	dir := o.Dir
	addr := net.ParseIP(o.Address)
	if addr == nil {
		return nil, fmt.Errorf("address %q is not an IP", o.Address)
	}
	_, svc, err := net.ParseCIDR(o.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("service CIDR: %w", err)
	}
	// The first address of the range is the kubernetes Service's ClusterIP, which pods dial.
	first := slices.Clone(svc.IP.To4())
	first[3]++
	p, err := newPKI(dir, []net.IP{addr, first})
	if err != nil {
		return nil, fmt.Errorf("generating certificates: %w", err)
	}
	c := &Cluster{Root: root, Dir: dir, t: t, opts: o, pki: p, APIServerLog: filepath.Join(dir, "kube-apiserver.log")}
	t.Cleanup(c.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()

	// A port picked by listening on :0 can be taken by someone else before the process binds
	// it; then the process exits early and the whole start is retried with new ports.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		var retry bool
		retry, lastErr = c.startProcesses(ctx, apiserverBin, etcdBin, attempt)
		if lastErr == nil || !retry {
			break
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	if err := c.startServiceAccountDefaults(); err != nil {
		return nil, err
	}
	crds := filepath.Join(root, "deploy", "crds")
	if err := c.Apply(ctx, crds); err != nil {
		return nil, fmt.Errorf("applying %s: %w", crds, err)
	}
	if err := c.WaitForCRDs(ctx, crds); err != nil {
		return nil, err
	}
	t.Logf("kubetest: cluster at %s ready in %v", c.Config.Host, time.Since(begin).Round(10*time.Millisecond))
	return c, nil
}

// startProcesses starts etcd and kube-apiserver and waits for /readyz. retry reports a failure
// that new ports may cure (a process exited early because its address was in use).
func (c *Cluster) startProcesses(ctx context.Context, apiserverBin, etcdBin string, attempt int) (retry bool, err error) {
	ports, err := freePorts(3)
	if err != nil {
		return false, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	if c.opts.Port != 0 {
		apiPort = c.opts.Port
	}
	suffix := ""
	if attempt > 0 {
		suffix = "." + strconv.Itoa(attempt)
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcd, err := c.startProcess("etcd", etcdBin, filepath.Join(c.Dir, "etcd"+suffix+".log"),
		"--name=kubetest",
		"--data-dir="+filepath.Join(c.Dir, "etcd"+suffix),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--initial-cluster-state=new",
		"--log-level=warn",
	)
	if err != nil {
		return false, err
	}
	if err := waitHTTP(ctx, etcd, etcdURL+"/health", nil); err != nil {
		etcd.stop(c.t)
		return addrInUse(etcd.logPath), fmt.Errorf("etcd did not become healthy: %w\n%s", err, etcd.tail(30))
	}

	c.APIServerLog = filepath.Join(c.Dir, "kube-apiserver"+suffix+".log")
	p := c.pki
	apiserver, err := c.startProcess("kube-apiserver", apiserverBin, c.APIServerLog, mergeFlags([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + c.opts.Address,
		"--advertise-address=" + c.opts.Address,
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + p.path("apiserver.crt"),
		"--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("ca.crt"),
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--api-audiences=" + Issuer,
		"--authorization-mode=RBAC",
		"--anonymous-auth=false",
		"--service-cluster-ip-range=" + c.opts.ServiceCIDR,
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(c.Dir, "apiserver-certs"),
		"--v=1",
	}, c.opts.APIServerArgs)...)
	if err != nil {
		etcd.stop(c.t)
		return false, err
	}

	host := "https://" + net.JoinHostPort(c.opts.Address, strconv.Itoa(apiPort))
	c.Config = &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: p.adminCert,
			KeyData:  p.adminKey,
		},
		QPS:   200,
		Burst: 400,
	}
	hc, err := rest.HTTPClientFor(c.Config)
	if err != nil {
		return false, err
	}
	if err := waitHTTP(ctx, apiserver, host+"/readyz", hc); err != nil {
		apiserver.stop(c.t)
		etcd.stop(c.t)
		return addrInUse(c.APIServerLog), fmt.Errorf("kube-apiserver did not become ready within %v: %w\nlast lines of %s:\n%s",
			StartTimeout, err, c.APIServerLog, apiserver.tail(40))
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return false, err
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return false, err
	}
	c.mapper = newMapper(c.Client)
	return false, nil
}

// mergeFlags returns defaults with extra added; an extra flag --name=value replaces every
// default of the same name.
func mergeFlags(defaults, extra []string) []string {
	replaced := map[string]bool{}
	for _, e := range extra {
		if name, _, ok := strings.Cut(e, "="); ok {
			replaced[name] = true
		}
	}
	var out []string
	for _, d := range defaults {
		if name, _, _ := strings.Cut(d, "="); !replaced[name] {
			out = append(out, d)
		}
	}
	return append(out, extra...)
}

// RepoRoot is the repository root: the nearest directory above the working directory that
// holds go.work.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.work in %s or any directory above it: cannot find the repository root", dir)
		}
	}
}

// binaries finds kube-apiserver and etcd, or explains how to get them.
func binaries(root string) (apiserver, etcd string, err error) {
	apiserver = os.Getenv("AMBIT_KUBE_APISERVER")
	if apiserver == "" {
		apiserver = filepath.Join(root, ".cache", "bin", "kube-apiserver")
	}
	if !isExecutable(apiserver) {
		return "", "", fmt.Errorf("kube-apiserver not found at %s: run `make kube-apiserver` (it builds the binary from the k8s.io/kubernetes module into .cache/bin once; or set AMBIT_KUBE_APISERVER)", apiserver)
	}
	etcd = os.Getenv("AMBIT_ETCD")
	if etcd == "" {
		if etcd, err = exec.LookPath("etcd"); err != nil {
			etcd = "/usr/bin/etcd"
		}
	}
	if !isExecutable(etcd) {
		return "", "", fmt.Errorf("etcd not found at %s or in $PATH: run `make setup` (it installs Debian's etcd-server; or set AMBIT_ETCD)", etcd)
	}
	return apiserver, etcd, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// process is a child process whose output goes to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status, set before done is closed
}

func (c *Cluster) startProcess(name, bin, logPath string, args ...string) (*process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = c.Dir
	// Own process group, and killed with the test binary should it die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	c.onStop(func() { p.stop(c.t) })
	if c.opts.Started != nil {
		c.opts.Started(name, cmd.Process.Pid)
	}
	return p, nil
}

// stop ends the process: SIGTERM, then SIGKILL to its whole group after a grace period.
func (p *process) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("kubetest: %s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
		}
	}
	if t.Failed() && p.name == "kube-apiserver" {
		t.Logf("kubetest: last lines of %s:\n%s", p.logPath, p.tail(20))
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of the process's log.
func (p *process) tail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func addrInUse(logPath string) bool {
	data, _ := os.ReadFile(logPath)
	return bytes.Contains(data, []byte("address already in use"))
}

// waitHTTP polls url until it answers 200, the process exits, or ctx ends.
func waitHTTP(ctx context.Context, p *process, url string, hc *http.Client) error {
	if hc == nil {
		hc = &http.Client{}
	}
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := hc.Do(req.WithContext(reqCtx))
		if err == nil {
			body := make([]byte, 512)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			last = fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body[:n])))
		} else {
			last = err
		}
		cancel()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startServiceAccountDefaults does the one job of kube-controller-manager that tests need: a
// "default" ServiceAccount in every namespace, without which the ServiceAccount admission
// plugin rejects pods.
func (c *Cluster) startServiceAccountDefaults() error {
	factory := informers.NewSharedInformerFactory(c.Client, 0)
	inf := factory.Core().V1().Namespaces().Informer()
	ensure := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok || ns.DeletionTimestamp != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.EnsureServiceAccount(ctx, ns.Name, "default"); err != nil && !apierrors.IsForbidden(err) && ctx.Err() == nil {
			c.t.Logf("kubetest: default ServiceAccount of namespace %s: %v", ns.Name, err)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: ensure}); err != nil {
		return err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		inf.Run(stop)
	}()
	// Registered after the processes, so it runs before they are stopped.
	c.onStop(func() {
		close(stop)
		wg.Wait()
	})
	return nil
}

// onStop registers f to run at Stop, before everything registered earlier.
func (c *Cluster) onStop(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stops = append(c.stops, f)
}

// Stop stops the API server and etcd now (they stop at the end of the test anyway). It is
// idempotent; the clients fail afterwards.
func (c *Cluster) Stop() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	stops := c.stops
	c.mu.Unlock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
}

// ClientCertificate issues a client certificate of the cluster's CA for user cn in the given
// groups (PEM), for a component that authenticates with one: a kubelet is
// system:node:<name> in system:nodes, the controller manager system:kube-controller-manager.
func (c *Cluster) ClientCertificate(cn string, groups ...string) (certPEM, keyPEM []byte, err error) {
	return c.pki.clientCert(cn, groups)
}

// ConfigFor returns a client configuration that authenticates as user cn in groups with a
// client certificate (ClientCertificate).
func (c *Cluster) ConfigFor(cn string, groups ...string) (*rest.Config, error) {
	cert, key, err := c.ClientCertificate(cn, groups...)
	if err != nil {
		return nil, err
	}
	return &rest.Config{
		Host:            c.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM, CertData: cert, KeyData: key},
		QPS:             c.Config.QPS,
		Burst:           c.Config.Burst,
	}, nil
}

// PKIFile is the path of one of the cluster's key files: "ca.crt" (the CA of every
// certificate and of client authentication), "sa.key" and "sa.pub" (the ServiceAccount token
// signing key and its public half), "kubelet-client.crt" and "kubelet-client.key" (the API
// server's client certificate towards kubelets). PKIDir(dir, name) is the same path before
// the cluster exists, for flags given to StartWith.
func PKIDir(dir, name string) string { return filepath.Join(dir, name) }

// PKIFile is the path of one of the cluster's key files (see PKIDir).
func (c *Cluster) PKIFile(name string) string { return c.pki.path(name) }

// EnsureServiceAccount creates the namespace and the ServiceAccount in it unless they exist.
func (c *Cluster) EnsureServiceAccount(ctx context.Context, namespace, name string) error {
	if err := c.EnsureNamespace(ctx, namespace, nil); err != nil {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	_, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return nil
}

// EnsureNamespace creates the namespace with the given labels unless it exists (an existing
// namespace is left as it is).
func (c *Cluster) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// TokenFor returns a one-hour token of the ServiceAccount from the TokenRequest API, for the
// API server's audience (Issuer). The ServiceAccount must exist (EnsureServiceAccount).
func (c *Cluster) TokenFor(ctx context.Context, namespace, serviceAccount string) (string, error) {
	return c.Token(ctx, namespace, serviceAccount, authenticationv1.TokenRequestSpec{})
}

// Token returns a token of the ServiceAccount from the TokenRequest API with the given spec:
// audiences (default: Issuer), expiry (default and minimum: 1 h here, 10 min by the API),
// and a bound object. A token bound to a Pod carries the pod's name, uid and node name, which
// a TokenReview reports in the user's extra fields
// (authentication.kubernetes.io/pod-name, .../pod-uid, .../node-name).
func (c *Cluster) Token(ctx context.Context, namespace, serviceAccount string, spec authenticationv1.TokenRequestSpec) (string, error) {
	if spec.ExpirationSeconds == nil {
		hour := int64(3600)
		spec.ExpirationSeconds = &hour
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount,
		&authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for ServiceAccount %s/%s: %w", namespace, serviceAccount, err)
	}
	return tr.Status.Token, nil
}

// ClientAs returns a client configuration authenticated as the ServiceAccount with a real
// token (TokenFor), so requests get exactly its RBAC permissions. It creates the namespace and
// the ServiceAccount if missing. Call it from the test's goroutine: it fails the test on error.
func (c *Cluster) ClientAs(namespace, serviceAccount string) *rest.Config {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.EnsureServiceAccount(ctx, namespace, serviceAccount); err != nil {
		c.t.Fatalf("kubetest: %v", err)
	}
	token, err := c.TokenFor(ctx, namespace, serviceAccount)
	if err != nil {
		c.t.Fatalf("kubetest: %v", err)
	}
	return &rest.Config{
		Host:            c.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
		BearerToken:     token,
		QPS:             c.Config.QPS,
		Burst:           c.Config.Burst,
	}
}

// Kubeconfig writes cfg (Config, or one from ClientAs) as a kubeconfig file into the cluster's
// directory and returns its path, for a process under test that takes --kubeconfig.
func (c *Cluster) Kubeconfig(cfg *rest.Config) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["kubetest"] = &clientcmdapi.AuthInfo{
		Token:                 cfg.BearerToken,
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
	}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "kubetest"}
	kc.CurrentContext = "kubetest"
	f, err := os.CreateTemp(c.Dir, "kubeconfig-*")
	if err != nil {
		return "", err
	}
	f.Close()
	if err := clientcmd.WriteToFile(*kc, f.Name()); err != nil {
		return "", err
	}
	return f.Name(), nil
}
