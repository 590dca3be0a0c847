package app

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	cav1 "ambit.dev/proto/ca/v1"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/nodeapi"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"ambit.dev/ztunnel/internal/capture"
	"ambit.dev/ztunnel/internal/netnstest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeController is the controller at the process edge: it pushes a fixed config over delta
// xDS and signs certificates with a test CA.
type fakeController struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	cav1.UnimplementedCertificateServiceServer
	ca        *identity.CA
	resources map[string]map[string]proto.Message
	srv       *grpc.Server
	addr      string
}

func startController(t *testing.T, ca *identity.CA, resources map[string]map[string]proto.Message) *fakeController {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	cert := identitytest.Issue(t, ca, xdsclient.ControllerID(td), 0)
	f := &fakeController{ca: ca, resources: resources}
	f.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13})))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(f.srv, f)
	cav1.RegisterCertificateServiceServer(f.srv, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(f.srv.Stop)
	return f
}

func (f *fakeController) DeltaAggregatedResources(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	nonce := 0
	for {
		req, err := st.Recv()
		if err != nil {
			return err
		}
		if req.GetResponseNonce() != "" {
			continue // an ACK
		}
		resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: req.GetTypeUrl(), SystemVersionInfo: "1"}
		for name, m := range f.resources[req.GetTypeUrl()] {
			a, err := anypb.New(m)
			if err != nil {
				return err
			}
			resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: "1", Resource: a})
		}
		nonce++
		resp.Nonce = fmt.Sprint(nonce)
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}

func (f *fakeController) CreateCertificate(_ context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	b, _ := pem.Decode([]byte(req.GetCsr()))
	if b == nil {
		return nil, fmt.Errorf("no CSR")
	}
	id, err := spiffeid.FromString(req.GetIdentity())
	if err != nil {
		return nil, err
	}
	chain, err := f.ca.Sign(b.Bytes, id, time.Duration(req.GetValiditySeconds())*time.Second)
	if err != nil {
		return nil, err
	}
	resp := &cav1.CreateCertificateResponse{RootBundle: string(f.ca.RootPEM())}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})))
	}
	return resp, nil
}

func workload(uid, ip string) *configv1.Workload {
	return &configv1.Workload{
		Uid: uid, Name: uid, Namespace: "shop", ServiceAccount: uid,
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: configv1.TunnelProtocol_HBONE,
	}
}

// signalHandler logs to the test and closes a channel when a given message is logged.
type signalHandler struct {
	t    *testing.T
	name string
	mu   sync.Mutex
	want map[string]chan struct{}
}

func newSignalHandler(t *testing.T, name string, msgs ...string) *signalHandler {
	h := &signalHandler{t: t, name: name, want: map[string]chan struct{}{}}
	for _, m := range msgs {
		h.want[m] = make(chan struct{})
	}
	return h
}

func (h *signalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if testing.Verbose() {
		var b strings.Builder
		r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
		h.t.Logf("%s %s: %s%s", r.Time.Format("15:04:05.000"), h.name, r.Message, b.String())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.want[r.Message]; ok {
		close(c)
		delete(h.want, r.Message)
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }

// add makes the handler watch for one more message.
func (h *signalHandler) add(msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.want[msg] = make(chan struct{})
}

func (h *signalHandler) wait(msg string, d time.Duration) {
	h.t.Helper()
	h.mu.Lock()
	c, ok := h.want[msg]
	h.mu.Unlock()
	if !ok {
		return // logged already
	}
	select {
	case <-c:
	case <-time.After(d):
		h.t.Fatalf("%s did not log %q within %s", h.name, msg, d)
	}
}

func inNetns(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := capture.InNetns(ns, fn); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestReplaceZtunnel runs the ztunnel of a node (app.Run, as cmd/ztunnel does), then a second
// one beside it, and stops the first the way Kubernetes does (SIGTERM: its context ends).
// A client opens a new connection every 50 ms through both captured pods the whole time,
// and long-lived connections opened before the hand-over go on and end normally. Then the
// controller goes away, and nothing changes.
func TestReplaceZtunnel(t *testing.T) {
	clientNS, serverNS := netnstest.Pair(t)
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := startController(t, ca, map[string]map[string]proto.Message{
		configv1.WorkloadTypeURL: {
			"c//Pod/shop/client": workload("client", "10.250.0.1"),
			"c//Pod/shop/server": workload("server", "10.250.0.2"),
		},
	})
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(root, ca.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("node-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	readyAddr := freePort(t)
	cfg := Config{
		Node: "n1", TrustDomain: "cluster.local", Controller: ctrl.addr, TokenFile: token, RootCert: root,
		StateDir: filepath.Join(dir, "state"), NodeAPI: filepath.Join(dir, "run", "ztunnel.sock"),
		ReadyAddr: readyAddr, DrainPeriod: 5 * time.Second, HandoverGrace: 20 * time.Second,
	}
	run := func(name string, cfg Config, h *signalHandler) (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		cfg.Logger = slog.New(h)
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("%s did not stop", name)
			}
		})
		return cancel, done
	}

	// The applications in the server pod: an echo and a line echo for long connections.
	var apps []net.Listener
	inNetns(t, serverNS, func() error {
		for _, a := range []string{"10.250.0.2:8080", "10.250.0.2:8082"} {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return err
			}
			apps = append(apps, ln)
		}
		return nil
	})
	for i, ln := range apps {
		defer ln.Close()
		netnstest.Serve(ln, func(c net.Conn) {
			if i == 0 {
				b, _ := io.ReadAll(c)
				_, _ = c.Write(append([]byte("echo: "), b...))
				return
			}
			_, _ = io.Copy(c, c)
		})
	}
	dial := func(addr string) (net.Conn, error) {
		var c net.Conn
		err := capture.InNetns(clientNS, func() error {
			var err error
			c, err = net.DialTimeout("tcp", addr, 5*time.Second)
			return err
		})
		return c, err
	}
	call := func() error {
		c, err := dial("10.250.0.2:8080")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "hi")
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "echo: hi" {
			err = fmt.Errorf("answer %q", b)
		}
		return err
	}

	// The first ztunnel, with both pods handed to it.
	hA := newSignalHandler(t, "old ztunnel", "a successor took over; draining", "ztunnel stopped")
	stopA, doneA := run("old ztunnel", cfg, hA)
	api := nodeapi.NewClient(cfg.NodeAPI)
	ctx := context.Background()
	wait.Until(t, 20*time.Second, "node API", func() error { _, err := api.Pods(ctx); return err })
	for _, r := range []nodeapi.Registration{{UID: "client", NetNS: clientNS}, {UID: "server", NetNS: serverNS}} {
		if err := api.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		// Release the pods (rules out of the namespaces) through whichever ztunnel serves.
		for _, uid := range []string{"client", "server"} {
			_ = api.Remove(context.Background(), uid)
		}
	})
	wait.Until(t, 20*time.Second, "pods captured", func() error { return bothCaptured(api.Pods(ctx)) })
	if err := call(); err != nil {
		t.Fatalf("call through the first ztunnel: %v", err)
	}
	type long struct {
		c net.Conn
		r *bufio.Reader
	}
	roundTrip := func(l long, msg string) error {
		_ = l.c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(l.c, msg+"\n"); err != nil {
			return err
		}
		got, err := l.r.ReadString('\n')
		if err == nil && got != msg+"\n" {
			err = fmt.Errorf("echo %q", got)
		}
		return err
	}
	var longs []long
	for i := range 3 {
		c, err := dial("10.250.0.2:8082")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		l := long{c, bufio.NewReader(c)}
		if err := roundTrip(l, fmt.Sprint("before ", i)); err != nil {
			t.Fatal(err)
		}
		longs = append(longs, l)
	}

	calls := netnstest.StartCalls(50*time.Millisecond, call)

	// Kubernetes stops the old ztunnel; it keeps serving until the new one, started a
	// moment later, takes over.
	stopA()
	time.Sleep(300 * time.Millisecond)
	cfgB := cfg
	cfgB.HandoverGrace = time.Second
	hB := newSignalHandler(t, "new ztunnel", "took over from the previous ztunnel")
	stopB, doneB := run("new ztunnel", cfgB, hB)
	hB.wait("took over from the previous ztunnel", 20*time.Second)
	hA.wait("a successor took over; draining", 5*time.Second)
	time.Sleep(500 * time.Millisecond)
	for i, l := range longs {
		if err := roundTrip(l, fmt.Sprint("after ", i)); err != nil {
			t.Fatalf("long-lived connection %d after the hand-over: %v", i, err)
		}
		_ = l.c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(l.r); err != nil || len(b) != 0 {
			t.Fatalf("long-lived connection %d end: %q, %v", i, b, err)
		}
	}
	select {
	case err := <-doneA:
		if err != nil {
			t.Fatalf("old ztunnel: %v", err)
		}
	case <-time.After(cfg.DrainPeriod + 5*time.Second):
		t.Fatal("old ztunnel still running after its connections ended")
	}
	doneA <- nil // for the cleanup

	// The controller goes away: config and certificates stay, traffic flows, ready stays.
	ctrl.srv.Stop()
	time.Sleep(time.Second)
	if err := call(); err != nil {
		t.Fatalf("call with the controller away: %v", err)
	}
	resp, err := http.Get("http://" + readyAddr + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ready with the controller away: %d %s", resp.StatusCode, b)
	}

	n, failures := calls.Stop()
	if len(failures) > 0 || n < 20 {
		t.Fatalf("%d of %d connections failed:\n%s", len(failures), n, strings.Join(failures, "\n"))
	}
	t.Logf("%d connections, none failed", n)

	// SIGTERM with no successor: the pods are served for the grace period, then the
	// ztunnel drains and exits.
	hB.add("no successor took over; draining")
	stopped := time.Now()
	stopB()
	if err := call(); err != nil {
		t.Fatalf("call during the grace period: %v", err)
	}
	hB.wait("no successor took over; draining", 5*time.Second)
	if d := time.Since(stopped); d < cfgB.HandoverGrace {
		t.Fatalf("drained %s after SIGTERM, before the grace period (%s)", d, cfgB.HandoverGrace)
	}
	select {
	case err := <-doneB:
		if err != nil {
			t.Fatalf("new ztunnel: %v", err)
		}
	case <-time.After(cfg.DrainPeriod + 5*time.Second):
		t.Fatal("ztunnel still running after the grace and drain periods")
	}
	doneB <- nil // for the cleanup
}

// bothCaptured says why the node API's pods are not the two test pods, both captured.
func bothCaptured(pods []nodeapi.PodStatus, err error) error {
	switch {
	case err != nil:
		return err
	case len(pods) != 2:
		return fmt.Errorf("%d pods, want 2", len(pods))
	case !pods[0].Captured || !pods[1].Captured:
		return fmt.Errorf("pods %+v: not both captured", pods)
	}
	return nil
}

// TestStopNow: a ztunnel stopped with ErrStopNow (cmd/ztunnel: SIGINT) does not wait for a
// successor.
func TestStopNow(t *testing.T) {
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := startController(t, ca, nil)
	dir := t.TempDir()
	root, token := filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	_ = os.WriteFile(root, ca.RootPEM(), 0o600)
	_ = os.WriteFile(token, []byte("node-token"), 0o600)
	h := newSignalHandler(t, "ztunnel", "ztunnel started")
	cfg := Config{
		Node: "n1", TrustDomain: "cluster.local", Controller: ctrl.addr, TokenFile: token, RootCert: root,
		StateDir: filepath.Join(dir, "state"), NodeAPI: filepath.Join(dir, "ztunnel.sock"),
		DrainPeriod: time.Minute, HandoverGrace: time.Minute, Logger: slog.New(h),
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	h.wait("ztunnel started", 10*time.Second)
	cancel(ErrStopNow)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ztunnel stopped with ErrStopNow still waits")
	}
}
