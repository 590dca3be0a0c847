package e2e

import (
	"ambit.dev/mesh/identity/identitytest"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/xdsclient"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSecretRootRotation rotates the root of the CA Secret to an intermediate of another root,
// as docs/operations.md does in Kubernetes: each step replaces the Secret (it is immutable)
// and restarts the controller, which reads it with its least-privilege ServiceAccount. A
// proxy that started on the old root follows every step over its connection (the bundle of
// each certificate and GetTrustBundle), and at the end a proxy started on the new root alone
// reaches the controller and gets certificates that chain to it.
func TestSecretRootRotation(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 90*time.Second)
	e.pod("mesh", "api", "api", "node-a", "10.1.0.20")
	tok := e.ztunnelToken("node-a")
	id := workloadID(t, "mesh", "api")
	ctl := e.startController()
	defer func() { ctl.stop() }()
	old := e.caSecretObj()
	oldBundle, _ := e.bundle()
	oldRoot := oldBundle.X509Authorities()[0]
	pki := identitytest.NewUserPKI(t, time.Now().Add(365*24*time.Hour))
	newRoot, inter, interKey := pki.Root, pki.Inter, pki.InterKeyPEM
	certPEM := func(c *x509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}

	trust := identity.NewTrustBundle(oldBundle, nil)
	ca := xdsclient.NewCAClientWithBundle(dial(t, e.addr, tok, trust), trust)
	// issue gets a certificate as a proxy does after its stream reconnected, and returns it.
	issue := func() [][]byte {
		t.Helper()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := identity.CreateCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		var chain [][]byte
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			chain, err = ca.CreateCertificate(cctx, id, csr, time.Hour)
			cancel()
			if err == nil {
				return chain
			}
			if time.Now().After(deadline) {
				t.Fatalf("certificate from the restarted controller: %v", err)
			}
		}
	}
	verifiesTo := func(chain [][]byte, root *x509.Certificate) bool {
		_, err := identity.VerifyPeer(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{root}))
		return err == nil
	}
	replace := func(data map[string][]byte) {
		t.Helper()
		secrets := e.c.Client.CoreV1().Secrets(systemNS)
		ctl.stop()
		if err := secrets.Delete(ctx, caSecret, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		immutable := true
		if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: caSecret, Namespace: systemNS},
			Immutable: &immutable, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ctl = e.startController()
		e.waitReady()
	}
	oldCert, oldKey := old.Data["root-cert.pem"], old.Data["root-key.pem"]
	chain := append(certPEM(inter), certPEM(newRoot)...)

	// 1: the new root is trusted too; the old one signs.
	replace(map[string][]byte{"root-cert.pem": oldCert, "root-key.pem": oldKey, "extra-roots.pem": certPEM(newRoot)})
	if c := issue(); !verifiesTo(c, oldRoot) || len(trust.Roots()) != 2 {
		t.Fatalf("step 1: certificate chains to the old root %t, %d roots trusted; want true, 2", verifiesTo(c, oldRoot), len(trust.Roots()))
	}
	// 2: the new intermediate signs; the proxy still trusts both.
	replace(map[string][]byte{"root-cert.pem": oldCert, "root-key.pem": oldKey,
		"ca-cert.pem": certPEM(inter), "ca-key.pem": interKey, "cert-chain.pem": chain})
	if c := issue(); !verifiesTo(c, newRoot) || verifiesTo(c, oldRoot) || len(trust.Roots()) != 2 {
		t.Fatalf("step 2: certificate chains to the new root %t, %d roots trusted; want true, 2", verifiesTo(c, newRoot), len(trust.Roots()))
	}
	// 3: the old root is gone.
	replace(map[string][]byte{"ca-cert.pem": certPEM(inter), "ca-key.pem": interKey, "cert-chain.pem": chain})
	if c := issue(); !verifiesTo(c, newRoot) || len(trust.Roots()) != 1 || !trust.Roots()[0].Equal(newRoot) {
		t.Fatalf("step 3: %d roots trusted, want the new root only", len(trust.Roots()))
	}
	if err := ca.FetchBundle(ctx); err != nil {
		t.Fatalf("GetTrustBundle after the rotation: %v", err)
	}
	// A proxy started on the new root alone (the ConfigMap after step 3) reaches the
	// controller and gets certificates of it; one on the old root alone does not.
	newOnly := x509bundle.FromX509Authorities(td, []*x509.Certificate{newRoot})
	if err := certify(ctx, dial(t, e.addr, tok, newOnly), id, newOnly); err != nil {
		t.Fatalf("a proxy on the new root: %v", err)
	}
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := certify(octx, dial(t, e.addr, tok, oldBundle), id, oldBundle); err == nil {
		t.Fatal("a proxy on the old root alone reached the controller after the rotation")
	}
}
