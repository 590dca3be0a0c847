package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const settle = 15 * time.Second

// Labelling a namespace ambient turns its pods' Workloads to HBONE in a connected proxy;
// removing the label turns them back to NONE (the model keeps every Running pod with an IP
// as a Workload; pods outside the mesh are reached in plain TCP).
func TestNamespaceEnrolment(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 30*time.Second)
	if err := e.c.EnsureNamespace(ctx, "apps", nil); err != nil {
		t.Fatal(err)
	}
	e.pod("apps", "web", "default", "node-a", "10.1.0.5")
	e.pod("apps", "db", "default", "node-b", "10.1.1.7")
	tok := e.ztunnelToken("node-a")
	e.startController()
	bundle, _ := e.bundle()
	p := startProxy(t, e.addr, tok, "node-a", bundle)

	expect := func(want configv1.TunnelProtocol) {
		t.Helper()
		for _, name := range []string{"web", "db"} {
			wait.Until(t, settle, fmt.Sprintf("Workload apps/%s with tunnel protocol %v", name, want), func() error {
				if w := p.workload("apps", name); w == nil || w.GetTunnelProtocol() != want {
					return fmt.Errorf("proxy holds %v", w)
				}
				return nil
			})
		}
	}
	expect(configv1.TunnelProtocol_NONE)
	w := p.workload("apps", "web")
	if w.GetNode() != "node-a" || w.GetServiceAccount() != "default" || len(w.GetAddresses()) != 1 {
		t.Errorf("Workload apps/web = %v, want node-a, ServiceAccount default, one address", w)
	}

	ambient := "ambient"
	e.labelNamespace("apps", &ambient)
	expect(configv1.TunnelProtocol_HBONE)

	e.labelNamespace("apps", nil)
	expect(configv1.TunnelProtocol_NONE)
}

// A node's ztunnel gets certificates only for the identities of pods on its node.
func TestCertificatesFollowNodes(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 40*time.Second)
	e.pod("shop", "cart", "alice", "node-a", "10.1.0.10")
	e.pod("shop", "pay", "bob", "node-b", "10.1.1.10")
	tok := e.ztunnelToken("node-a")
	e.startController()
	bundle, _ := e.bundle()

	// Once a proxy sees both pods, so does the CA (same index).
	p := startProxy(t, e.addr, tok, "node-a", bundle)
	wait.Until(t, settle, "the controller to publish shop/cart and shop/pay", func() error {
		if cart, pay := p.workload("shop", "cart"), p.workload("shop", "pay"); cart == nil || pay == nil {
			return fmt.Errorf("proxy holds cart %v, pay %v", cart, pay)
		}
		return nil
	})

	conn := dial(t, e.addr, tok, bundle)
	alice, bob := workloadID(t, "shop", "alice"), workloadID(t, "shop", "bob")
	if err := certify(ctx, conn, alice, bundle); err != nil {
		t.Errorf("ztunnel of node-a asking for %s (pod on node-a): %v", alice, err)
	}
	err := certify(ctx, conn, bob, bundle)
	if code(err) != codes.PermissionDenied {
		t.Errorf("ztunnel of node-a asking for %s (pod on node-b): %v, want PermissionDenied", bob, err)
	}

	// A forged token (right shape, wrong signature) and a real token of another ServiceAccount.
	forged := tok[:len(tok)-8] + "AAAAAAAA"
	if forged == tok {
		forged = tok[:len(tok)-8] + "BBBBBBBB"
	}
	for name, bad := range map[string]string{"forged": forged, "not a token": "hello"} {
		err := certify(ctx, dial(t, e.addr, bad, bundle), alice, bundle)
		if code(err) != codes.Unauthenticated {
			t.Errorf("%s token asking for %s: %v, want Unauthenticated", name, alice, err)
		}
	}
	other, err := e.c.TokenFor(ctx, "shop", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := certify(ctx, dial(t, e.addr, other, bundle), alice, bundle); code(err) != codes.Unauthenticated {
		t.Errorf("workload's own token asking for %s: %v, want Unauthenticated", alice, err)
	}
}

// code is the gRPC code of err or of an error it wraps.
func code(err error) codes.Code {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if s, ok := status.FromError(e); ok {
			return s.Code()
		}
	}
	return codes.OK
}

// A restart keeps the root, which lives in the Secret ambit-system/ambit-ca and nowhere
// else, and a proxy reconnecting to the ready controller, its config current, gets nothing but
// the per-stream announcements.
func TestRestartKeepsRootAndConfig(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 40*time.Second)
	ambient := "ambient"
	if err := e.c.EnsureNamespace(ctx, "mesh", map[string]string{labelDataplan: ambient}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Client.CoreV1().Secrets(systemNS).Get(ctx, caSecret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("CA Secret before the first start: %v, want NotFound", err)
	}
	e.pod("mesh", "api", "api", "node-a", "10.1.0.20")
	tok := e.ztunnelToken("node-a")
	// The controller runs with no CA dir (as in the Deployment): the root is either in the
	// Secret, which the controller creates with its own ServiceAccount's permissions, or in
	// memory, where a restart would lose it.
	first := e.startController()
	sec := e.caSecretObj()
	if sec.Immutable == nil || !*sec.Immutable || len(sec.Data["root-key.pem"]) == 0 {
		t.Errorf("CA Secret: immutable %v, %d bytes of key; want an immutable Secret with the key", sec.Immutable, len(sec.Data["root-key.pem"]))
	}
	bundle, root := e.bundle()
	p := startProxy(t, e.addr, tok, "node-a", bundle)
	wait.Until(t, settle, "mesh/api with HBONE at a connected proxy", func() error {
		w, connected := p.workload("mesh", "api"), p.client.Connected()
		if w == nil || w.GetTunnelProtocol() != configv1.TunnelProtocol_HBONE || !connected {
			return fmt.Errorf("proxy (connected %v) holds mesh/api = %v", connected, w)
		}
		return nil
	})
	// Let the first stream settle (every type announced, no push in flight).
	time.Sleep(300 * time.Millisecond)

	// The proxy comes back only once the new controller is ready. Without that gate a proxy
	// that reconnects before the informers have synced is served from a partial index: it is
	// told to remove every Workload and Service it holds, then to add them back (a controller
	// bug: the xDS server does not wait for the store's initial sync).
	p.gate.Store(true)
	first.stop()
	p.mu.Lock()
	calls, nonEmpty := p.calls, p.nonEmpty
	p.mu.Unlock()
	before := p.versions()
	wait.Until(t, 5*time.Second, "the proxy to disconnect after the controller stopped", func() error {
		if p.client.Connected() {
			return errors.New("still connected")
		}
		return nil
	})

	e.startController()
	e.waitReady()
	p.gate.Store(false)
	sec2 := e.caSecretObj()
	_, root2 := e.bundle()
	if !bytes.Equal(root, root2) || sec2.UID != sec.UID || sec2.ResourceVersion != sec.ResourceVersion {
		t.Fatalf("CA Secret changed across the restart (uid %s → %s, resourceVersion %s → %s)", sec.UID, sec2.UID, sec.ResourceVersion, sec2.ResourceVersion)
	}

	// The reconnect announces the types the proxy held nothing of (as on every stream); the
	// types it holds resources of are current, so they get nothing.
	wait.Until(t, settle, "the proxy to reconnect to the restarted controller", func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if connected := p.client.Connected(); p.calls <= calls || !connected {
			return fmt.Errorf("%d calls since, connected %v", p.calls-calls, connected)
		}
		return nil
	})
	// Allow for late pushes (a second commit after the informers synced).
	time.Sleep(time.Second)

	p.mu.Lock()
	gotCalls, gotNonEmpty, log := p.calls, p.nonEmpty, p.log[nonEmpty:]
	p.mu.Unlock()
	if gotNonEmpty != nonEmpty {
		t.Errorf("after the restart the proxy got %d updates with upserts or removals, want none (nothing changed):\n%s",
			gotNonEmpty-nonEmpty, strings.Join(log, "\n"))
	}
	t.Logf("reconnect: %d Apply calls, %d non-empty", gotCalls-calls, gotNonEmpty-nonEmpty)
	after := p.versions()
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("proxy state changed across the restart:\nbefore %v\nafter  %v", before, after)
	}

	// The proxy's old bundle still verifies the new controller (its serving certificate,
	// checked by dial) and what it signs: the restarted controller signs with the Secret's
	// root, as it has no other place to find it.
	if err := certify(ctx, dial(t, e.addr, tok, bundle), workloadID(t, "mesh", "api"), bundle); err != nil {
		t.Errorf("certificate from the restarted controller with the old bundle: %v", err)
	}
}

// Two replicas starting together against a cluster with no CA Secret end up with one root:
// the one whose create loses the race reads the winner's Secret.
func TestReplicasShareRoot(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 40*time.Second)
	e.pod("shop", "cart", "alice", "node-a", "10.1.0.30")
	tok := e.ztunnelToken("node-a")
	addrs := []string{e.addr, "127.0.0.1:" + strconv.Itoa(freePort(t))}
	mons := []string{e.mon, "127.0.0.1:" + strconv.Itoa(freePort(t))}
	var ctls []*controller
	for i := range addrs {
		ctls = append(ctls, e.launchController(addrs[i], mons[i], "replica-"+strconv.Itoa(i)))
	}
	for i, ctl := range ctls {
		e.waitServing(ctl, addrs[i])
	}
	bundle, _ := e.bundle()
	p := startProxy(t, e.addr, tok, "node-a", bundle)
	wait.Until(t, settle, "the controller to publish shop/cart", func() error {
		if p.workload("shop", "cart") == nil {
			return errors.New("not published")
		}
		return nil
	})
	for _, addr := range addrs {
		wait.Until(t, settle, "a certificate from the replica at "+addr, func() error {
			return certify(ctx, dial(t, addr, tok, bundle), workloadID(t, "shop", "alice"), bundle)
		})
	}
}
