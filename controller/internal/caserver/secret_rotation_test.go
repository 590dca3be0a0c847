package caserver

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The CA Secret through the three steps of a rotation: the keys are the CA dir's files, a
// Secret with a signing CA of the user's gets no new root, and a broken one is refused.
func TestSecretCARotation(t *testing.T) {
	ctx := t.Context()
	oldCert, oldKey, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pki := identitytest.NewUserPKI(t, time.Now().Add(365*24*time.Hour))
	chain := append(bytes.Clone(pki.InterPEM), pki.RootPEM...)
	secret := func(data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ambit-system", Name: "ambit-ca"}, Data: data}
	}
	for _, tc := range []struct {
		name        string
		data        map[string][]byte
		roots       int
		signedByNew bool
	}{
		{"1: extra root", map[string][]byte{SecretCertKey: oldCert, SecretKeyKey: oldKey, SecretExtraRootsKey: pki.RootPEM}, 2, false},
		{"2: the user's intermediate signs", map[string][]byte{SecretCertKey: oldCert, SecretKeyKey: oldKey,
			SecretCACertKey: pki.InterPEM, SecretCAKeyKey: pki.InterKeyPEM, SecretCertChainKey: chain}, 2, true},
		{"3: the old root removed", map[string][]byte{SecretCACertKey: pki.InterPEM, SecretCAKeyKey: pki.InterKeyPEM, SecretCertChainKey: chain}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(secret(tc.data))
			ca, err := (&SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca", CA: identity.CAOptions{TrustDomain: td}}).Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(ca.Bundle().X509Authorities()); n != tc.roots {
				t.Errorf("%d roots trusted, want %d", n, tc.roots)
			}
			if got := ca.SignerRoot().Equal(pki.Root); got != tc.signedByNew {
				t.Errorf("signs under the new root: %t, want %t", got, tc.signedByNew)
			}
			leaf := identitytest.Issue(t, ca, idA, 0)
			if _, err := identity.VerifyPeer(leaf.Certificate, ca.Bundle()); err != nil {
				t.Errorf("issued certificate does not verify against the CA's bundle: %v", err)
			}
			if n := creates(cs); n != 0 {
				t.Errorf("%d creates, want 0", n)
			}
		})
	}

	cs := fake.NewClientset(secret(map[string][]byte{SecretCACertKey: pki.InterPEM, SecretCertChainKey: chain}))
	_, err = (&SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca", CA: identity.CAOptions{TrustDomain: td}}).Load(ctx)
	if err == nil || !strings.Contains(err.Error(), "ca-key.pem is not") {
		t.Fatalf("ca-cert.pem without ca-key.pem: Load = %v", err)
	}
	if n := creates(cs); n != 0 {
		t.Errorf("a broken Secret was replaced: %d creates", n)
	}
}
