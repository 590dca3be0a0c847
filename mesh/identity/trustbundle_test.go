package identity_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
)

// A proxy's bundle through a rotation: the old root, both, the new root only. Peers of
// either root verify while both are trusted; after the removal the old root's are refused.
func TestTrustBundleRotation(t *testing.T) {
	oldCert, oldKey := newRootPEM(t)
	newCert, newKey := newRootPEM(t)
	oldCA := loadFiles(t, identity.CAFiles{RootCert: oldCert, RootKey: oldKey})
	step1 := loadFiles(t, identity.CAFiles{RootCert: oldCert, RootKey: oldKey, ExtraRoots: newCert})
	step2 := loadFiles(t, identity.CAFiles{CACert: newCert, CAKey: newKey, RootCert: oldCert})
	step3 := loadFiles(t, identity.CAFiles{CACert: newCert, CAKey: newKey})

	tb := identity.NewTrustBundle(oldCA.Bundle(), nil)
	oldPeer, newPeer := signChain(t, oldCA, "a", "old"), signChain(t, step3, "b", "new")
	verifies := func(step string, chain [][]byte, want bool) {
		t.Helper()
		_, err := identity.VerifyPeer(chain, tb)
		if want && err != nil {
			t.Errorf("%s: VerifyPeer = %v, want ok", step, err)
		}
		if !want && !errors.Is(err, identity.ErrUntrustedChain) {
			t.Errorf("%s: VerifyPeer = %v, want ErrUntrustedChain", step, err)
		}
	}
	verifies("start", oldPeer, true)
	verifies("start", newPeer, false)

	for _, s := range []struct {
		name         string
		ca           *identity.CA
		roots        int
		oldOK, newOK bool
	}{
		{"1: both trusted", step1, 2, true, true},
		{"2: new signer", step2, 2, true, true},
		{"3: old root removed", step3, 1, false, true},
	} {
		changed, err := tb.Update(s.ca.RootPEM(), signChain(t, s.ca, "c", "c"))
		if err != nil || !changed {
			t.Fatalf("%s: Update = %v, %v; want changed", s.name, changed, err)
		}
		if n := len(tb.Roots()); n != s.roots {
			t.Fatalf("%s: %d roots, want %d", s.name, n, s.roots)
		}
		verifies(s.name, oldPeer, s.oldOK)
		verifies(s.name, newPeer, s.newOK)
	}
	if changed, err := tb.Update(step3.RootPEM(), signChain(t, step3, "c", "c")); err != nil || changed {
		t.Fatalf("the same bundle again: Update = %v, %v; want unchanged", changed, err)
	}
}

// Whatever arrives in a response, only a bundle that passes every check replaces the roots.
func TestTrustBundleRefusesForgedBundles(t *testing.T) {
	ca := newCA(t, identity.CAOptions{})
	stranger := newCA(t, identity.CAOptions{})
	otherTD := newCA(t, identity.CAOptions{TrustDomain: mustTD(t, "example.org")})
	pki := identitytest.NewUserPKI(t, time.Now().Add(time.Hour))
	raw := identitytest.NewRawRoot(t, "cluster.local")
	leaf := raw.Leaf(t, "spiffe://cluster.local/ns/a/sa/b").Leaf
	ownChain := signChain(t, ca, "a", "a")
	strangerChain := signChain(t, stranger, "a", "a")
	both := append(ca.RootPEM(), stranger.RootPEM()...)

	for _, tc := range []struct {
		name   string
		bundle []byte
		issued [][]byte
		want   string
	}{
		{"garbage", []byte("garbage"), ownChain, "no PEM certificate"},
		{"empty", nil, ownChain, "holds no certificate"},
		{"a private key", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), ownChain, "unexpected PEM block"},
		{"a leaf as a root", append(ca.RootPEM(), identitytest.CertPEM(leaf)...), ownChain, "is not a CA"},
		{"a root of another trust domain", append(ca.RootPEM(), otherTD.RootPEM()...), ownChain, `trust domain "example.org"`},
		{"every root replaced", stranger.RootPEM(), strangerChain, "keeps none of the 1 roots"},
		{"does not cover what was issued", append(ca.RootPEM(), identitytest.CertPEM(pki.Root)...), strangerChain, "does not verify against it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := identity.NewTrustBundle(ca.Bundle(), nil)
			changed, err := tb.Update(tc.bundle, tc.issued)
			if !errors.Is(err, identity.ErrBundleRefused) || !strings.Contains(err.Error(), tc.want) || changed {
				t.Fatalf("Update = %v, %v; want ErrBundleRefused containing %q", changed, err, tc.want)
			}
			if roots := tb.Roots(); len(roots) != 1 || !roots[0].Equal(ca.SignerRoot()) {
				t.Fatalf("a refused bundle changed the roots: %d", len(roots))
			}
			if _, err := identity.VerifyPeer(strangerChain, tb); err == nil {
				t.Fatal("a peer of the stranger's root verifies after the refused update")
			}
		})
	}
	// The same checks pass a bundle that adds a root and covers what was issued.
	tb := identity.NewTrustBundle(ca.Bundle(), nil)
	if changed, err := tb.Update(both, strangerChain); err != nil || !changed {
		t.Fatalf("a bundle adding a root: Update = %v, %v", changed, err)
	}
	if !bytes.Equal(identitytest.CertPEM(tb.Roots()...), both) {
		t.Fatal("roots are not the bundle sent")
	}
	if _, err := tb.GetX509BundleForTrustDomain(mustTD(t, "example.org")); !errors.Is(err, identity.ErrUnknownTrustDomain) {
		t.Fatalf("another trust domain: %v", err)
	}
}
