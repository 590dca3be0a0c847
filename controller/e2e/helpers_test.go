// Package e2e tests the controller end to end: a real kube-apiserver and etcd
// (internal/kubetest), the deploy/ manifests, the controller (internal/app) running as its
// least-privilege ServiceAccount, and a test proxy speaking delta xDS and the CA protocol
// (mesh/xdsclient) with ServiceAccount tokens bound to ztunnel pods.
package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/controller/internal/app"
	"ambit.dev/controller/internal/kubetest"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	trustDomain   = "cluster.local"
	systemNS      = "ambit-system"
	ztunnelSA     = "ztunnel"
	labelDataplan = "ambit.dev/dataplane-mode"
	caSecret      = "ambit-ca" // the controller's default --ca-secret, in systemNS
)

var td = spiffeid.RequireTrustDomainFromString(trustDomain)

// env is a cluster with deploy/ applied, plus the controller's settings.
type env struct {
	t    *testing.T
	c    *kubetest.Cluster
	kc   string // kubeconfig of the ambit-controller ServiceAccount
	addr string // gRPC address
	mon  string // metrics and health address
	// waypointImage and waypointTemplate, when set, are the controller's --waypoint-image and
	// --waypoint-template.
	waypointImage, waypointTemplate string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := kubetest.Start(t)
	ctx := testCtx(t, 30*time.Second)
	if err := c.Apply(ctx, "deploy/namespace.yaml", "deploy/rbac/controller.yaml"); err != nil {
		t.Fatalf("applying deploy/: %v", err)
	}
	if err := c.EnsureServiceAccount(ctx, systemNS, ztunnelSA); err != nil {
		t.Fatal(err)
	}
	kc, err := c.Kubeconfig(c.ClientAs(systemNS, "ambit-controller"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, c: c, kc: kc, addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), mon: "127.0.0.1:" + strconv.Itoa(freePort(t))}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// controller is one running app.Run.
type controller struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// startController runs the controller as the ambit-controller ServiceAccount, with its
// defaults for Kubernetes mode (the CA root in the Secret ambit-system/ambit-ca, no CA dir),
// and waits until the Secret exists and its gRPC port accepts connections.
func (e *env) startController() *controller {
	e.t.Helper()
	return e.startControllerAt(e.addr, e.mon, "e2e")
}

// startControllerAt is startController with its own addresses and leader identity, for a
// second replica.
func (e *env) startControllerAt(addr, mon, id string) *controller {
	e.t.Helper()
	ctl := e.launchController(addr, mon, id)
	e.waitServing(ctl, addr)
	return ctl
}

// launchController starts the controller and returns at once.
func (e *env) launchController(addr, mon, id string) *controller {
	cfg := app.Config{
		Kubeconfig:  e.kc,
		TrustDomain: trustDomain,
		GRPCAddr:    addr,
		MetricsAddr: mon,
		Identity:    id,
		Debounce:    10 * time.Millisecond,

		WaypointImage:    e.waypointImage,
		WaypointTemplate: e.waypointTemplate,
	}
	cfg.NewPushServer, cfg.NewCAService = app.GRPCServices("")
	ctx, cancel := context.WithCancel(context.Background())
	ctl := &controller{cancel: cancel, done: make(chan struct{})}
	log := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("replica", id)
	go func() {
		defer close(ctl.done)
		ctl.err = app.Run(ctx, cfg, log)
	}()
	e.t.Cleanup(ctl.stop)
	return ctl
}

// waitServing waits until the CA Secret exists and the controller's gRPC port accepts
// connections.
func (e *env) waitServing(ctl *controller, addr string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-ctl.done:
			e.t.Fatalf("controller exited at start: %v", ctl.err)
		default:
		}
		_, getErr := e.c.Client.CoreV1().Secrets(systemNS).Get(context.Background(), caSecret, metav1.GetOptions{})
		conn, dialErr := net.DialTimeout("tcp", addr, time.Second)
		if dialErr == nil {
			conn.Close()
		}
		if getErr == nil && dialErr == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("controller not serving on %s: %v %v", addr, getErr, dialErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReady waits until the controller's /readyz answers 200: its informers have synced and
// the initial state is committed.
func (e *env) waitReady() {
	e.t.Helper()
	wait.Until(e.t, settle, "the controller to become ready", func() error {
		return getOK("http://" + e.mon + "/readyz")
	})
}

// getOK is nil when a GET of url answers 200 OK.
func getOK(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

func (c *controller) stop() {
	c.cancel()
	<-c.done
}

// testWriter sends the controller's log to t.Log, but not after the test ended.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line racing the end of the test
	w.t.Log(string(p))
	return len(p), nil
}

// caSecretObj reads the CA Secret as the cluster admin.
func (e *env) caSecretObj() *corev1.Secret {
	e.t.Helper()
	s, err := e.c.Client.CoreV1().Secrets(systemNS).Get(testCtx(e.t, 10*time.Second), caSecret, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("reading the CA Secret: %v", err)
	}
	return s
}

// bundle returns the trust bundle of the root in the CA Secret (root-cert.pem), parsed like
// ztunnel parses its root file, and the PEM itself.
func (e *env) bundle() (*x509bundle.Bundle, []byte) {
	e.t.Helper()
	data := e.caSecretObj().Data["root-cert.pem"]
	if len(data) == 0 {
		e.t.Fatalf("CA Secret %s/%s has no root-cert.pem", systemNS, caSecret)
	}
	var roots []*x509.Certificate
	for b := data; ; {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			e.t.Fatal(err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		e.t.Fatalf("CA Secret's root-cert.pem has no certificate")
	}
	return x509bundle.FromX509Authorities(td, roots), data
}

// pod creates a pod on node as admin and, when ip is set, marks it Running and Ready there.
func (e *env) pod(ns, name, sa, node, ip string) *corev1.Pod {
	e.t.Helper()
	ctx := testCtx(e.t, 20*time.Second)
	if err := e.c.EnsureServiceAccount(ctx, ns, sa); err != nil {
		e.t.Fatal(err)
	}
	// Restricted enough for ambit-system's Pod Security level.
	no, yes := false, true
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "main", Image: "example.invalid/main",
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	p, err := e.c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	if ip == "" {
		return p
	}
	p.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      ip,
		PodIPs:     []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	p, err = e.c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		e.t.Fatalf("pod %s/%s status: %v", ns, name, err)
	}
	return p
}

// ztunnelToken creates a ztunnel pod on node and returns a token bound to it.
func (e *env) ztunnelToken(node string) string {
	e.t.Helper()
	p := e.pod(systemNS, "ztunnel-"+node, ztunnelSA, node, "")
	tok, err := e.c.Token(testCtx(e.t, 20*time.Second), systemNS, ztunnelSA, authenticationv1.TokenRequestSpec{
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) labelNamespace(ns string, value *string) {
	e.t.Helper()
	v := "null"
	if value != nil {
		v = strconv.Quote(*value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, labelDataplan, v)
	if _, err := e.c.Client.CoreV1().Namespaces().Patch(testCtx(e.t, 10*time.Second), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatalf("labelling namespace %s: %v", ns, err)
	}
}

func dial(t *testing.T, addr, token string, bundle x509bundle.Source, extra ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := xdsclient.Dial(xdsclient.DialOptions{Address: addr, Token: xdsclient.StaticToken(token), Bundle: bundle, ServerID: xdsclient.ControllerID(td), Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// proxy is a test ztunnel: it holds what the controller sent and counts the updates.
type proxy struct {
	client *xdsclient.Client
	// gate, while closed, makes the proxy's connection attempts fail (it retries with backoff).
	gate atomic.Bool

	mu       sync.Mutex
	state    map[string]map[string]xdsclient.Resource // type URL → name → resource
	calls    int                                      // Apply calls
	nonEmpty int                                      // Apply calls with upserts or removals
	types    map[string]int                           // type URL → Apply calls
	log      []string                                 // the non-empty Apply calls, summarized
}

func startProxy(t *testing.T, addr, token, node string, bundle x509bundle.Source) *proxy {
	t.Helper()
	return startProxyAs(t, addr, token, xdsclient.NodeInfo{ID: "ztunnel-" + node, Node: node, Kind: xdsclient.KindZtunnel}, bundle)
}

// startProxyAs is startProxy for any kind of proxy, a waypoint's for one.
func startProxyAs(t *testing.T, addr, token string, node xdsclient.NodeInfo, bundle x509bundle.Source) *proxy {
	t.Helper()
	p := &proxy{state: map[string]map[string]xdsclient.Resource{}, types: map[string]int{}}
	gated := grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		if p.gate.Load() {
			return nil, errors.New("test: connections held back")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", a)
	})
	c, err := xdsclient.NewClient(dial(t, addr, token, bundle, gated), xdsclient.Config{
		Node:       node,
		TypeURLs:   configv1.TypeURLs,
		Handler:    xdsclient.HandlerFunc(p.apply),
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func (p *proxy) apply(typeURL string, upserts map[string]xdsclient.Resource, removals []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	p.types[typeURL]++
	if len(upserts)+len(removals) > 0 {
		p.nonEmpty++
		names := make([]string, 0, len(upserts))
		for n := range upserts {
			names = append(names, n)
		}
		p.log = append(p.log, fmt.Sprintf("%s: upserts %q, removals %q", typeURL, names, removals))
	}
	m := p.state[typeURL]
	if m == nil {
		m = map[string]xdsclient.Resource{}
		p.state[typeURL] = m
	}
	for n, r := range upserts {
		m[n] = r
	}
	for _, n := range removals {
		delete(m, n)
	}
	return nil
}

// workload returns the Workload of pod ns/name the proxy holds, or nil.
func (p *proxy) workload(ns, name string) *configv1.Workload {
	return held[*configv1.Workload](p, configv1.WorkloadTypeURL, ns, name)
}

// waypoint returns the Waypoint of Gateway ns/name the proxy holds, or nil.
func (p *proxy) waypoint(ns, name string) *configv1.Waypoint {
	return held[*configv1.Waypoint](p, configv1.WaypointTypeURL, ns, name)
}

// held returns the resource of typeURL named ns/name (in its message) the proxy holds, or nil.
func held[T interface {
	comparable
	GetNamespace() string
	GetName() string
}](p *proxy, typeURL, ns, name string) T {
	p.mu.Lock()
	defer p.mu.Unlock()
	var zero T
	for _, r := range p.state[typeURL] {
		if m, ok := r.Message.(T); ok && m.GetNamespace() == ns && m.GetName() == name {
			return m
		}
	}
	return zero
}

// versions is a snapshot of type → name → version.
func (p *proxy) versions() map[string]map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]map[string]string{}
	for t, m := range p.state {
		out[t] = map[string]string{}
		for n, r := range m {
			out[t][n] = r.Version
		}
	}
	return out
}

// certify asks for a certificate for id through conn and checks the chain against bundle.
func certify(ctx context.Context, conn grpc.ClientConnInterface, id spiffeid.ID, bundle x509bundle.Source) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := identity.CreateCSR(key, id)
	if err != nil {
		return err
	}
	chain, err := xdsclient.NewCAClient(conn).CreateCertificate(ctx, id, csr, time.Hour)
	if err != nil {
		return err
	}
	got, err := identity.VerifyPeer(chain, bundle)
	if err != nil {
		return fmt.Errorf("issued chain does not verify: %w", err)
	}
	if got != id {
		return fmt.Errorf("issued certificate is for %s, want %s", got, id)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return err
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		return errors.New("issued certificate is not for the CSR's key")
	}
	return nil
}

func workloadID(t *testing.T, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
