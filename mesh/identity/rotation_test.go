package identity_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
)

func newRootPEM(t testing.TB) (cert, key []byte) {
	t.Helper()
	cert, key, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func loadFiles(t testing.TB, f identity.CAFiles) *identity.CA {
	t.Helper()
	ca, err := identity.LoadCAFiles(f, identity.CAOptions{})
	if err != nil {
		t.Fatalf("LoadCAFiles: %v", err)
	}
	return ca
}

// onlyRoot is a bundle of one root, to show which root a chain verifies to.
func onlyRoot(c *x509.Certificate) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{c})
}

func parsePEM(t testing.TB, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func signChain(t testing.TB, ca *identity.CA, ns, sa string) [][]byte {
	t.Helper()
	id := mustID(t, ns, sa)
	chain, err := ca.Sign(csrFor(t, id), id, 0)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return chain
}

// A CA with an extra root trusts both: its bundle carries two roots, a peer of either
// verifies, and it still signs with its own root.
func TestCATrustsExtraRoots(t *testing.T) {
	oldCert, oldKey := newRootPEM(t)
	newCert, newKey := newRootPEM(t)
	oldCA := loadFiles(t, identity.CAFiles{RootCert: oldCert, RootKey: oldKey})
	newCA := loadFiles(t, identity.CAFiles{RootCert: newCert, RootKey: newKey})
	both := loadFiles(t, identity.CAFiles{RootCert: oldCert, RootKey: oldKey, ExtraRoots: newCert})

	if got := parsePEM(t, both.RootPEM()); len(got) != 2 || !bytes.Equal(got[0].Raw, parsePEM(t, oldCert)[0].Raw) {
		t.Fatalf("RootPEM holds %d roots, want 2 with the signing root first", len(got))
	}
	if n := len(both.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("Bundle has %d roots, want 2", n)
	}
	for name, chain := range map[string][][]byte{
		"old root's peer": signChain(t, oldCA, "a", "a"), "new root's peer": signChain(t, newCA, "b", "b"),
	} {
		if _, err := identity.VerifyPeer(chain, both.Bundle()); err != nil {
			t.Errorf("%s: VerifyPeer against both roots: %v", name, err)
		}
	}
	own := signChain(t, both, "c", "c")
	if _, err := identity.VerifyPeer(own, onlyRoot(both.SignerRoot())); err != nil || !both.SignerRoot().Equal(parsePEM(t, oldCert)[0]) {
		t.Fatalf("the CA with an extra root does not sign with its own root: %v", err)
	}
	if _, err := identity.VerifyPeer(own, newCA.Bundle()); !errors.Is(err, identity.ErrUntrustedChain) {
		t.Fatalf("own certificate verified against the extra root only: %v", err)
	}
}

// A user's intermediate signs: the chain carries it, peers verify to the user's root, and no
// leaf outlives the intermediate.
func TestCASignsWithUserIntermediate(t *testing.T) {
	interEnd := time.Now().Add(10 * time.Hour)
	pki := identitytest.NewUserPKI(t, interEnd)
	oldCert, oldKey := newRootPEM(t)
	ca := loadFiles(t, identity.CAFiles{RootCert: oldCert, RootKey: oldKey, CACert: pki.InterPEM, CAKey: pki.InterKeyPEM, CertChain: pki.ChainPEM})

	chain := signChain(t, ca, "shop", "web")
	if len(chain) != 2 || !bytes.Equal(chain[1], pki.Inter.Raw) {
		t.Fatalf("chain has %d certificates, want the leaf and the intermediate", len(chain))
	}
	if _, err := identity.VerifyPeer(chain, onlyRoot(pki.Root)); err != nil {
		t.Fatalf("leaf does not verify to the user's root: %v", err)
	}
	leaf, _ := x509.ParseCertificate(chain[0])
	if leaf.NotAfter.After(interEnd) {
		t.Errorf("leaf NotAfter %s outlives the intermediate's %s", leaf.NotAfter, interEnd)
	}
	roots := ca.Bundle().X509Authorities()
	if len(roots) != 2 || !roots[0].Equal(pki.Root) || !roots[1].Equal(parsePEM(t, oldCert)[0]) {
		t.Fatalf("bundle = %d roots, want the user's root, then the old root (still trusted while root-cert.pem is there)", len(roots))
	}
	// Without cert-chain.pem's leading copy of ca-cert.pem, and as PKCS#8: the same.
	if _, err := identity.LoadCAFiles(identity.CAFiles{CACert: pki.InterPEM, CAKey: pki.InterKeyPEM, CertChain: pki.RootPEM}, identity.CAOptions{}); err != nil {
		t.Fatalf("chain of the root only: %v", err)
	}
}

func TestCAFilesRefused(t *testing.T) {
	pki := identitytest.NewUserPKI(t, time.Now().Add(time.Hour))
	other := identitytest.NewUserPKI(t, time.Now().Add(time.Hour))
	rootCert, rootKey := newRootPEM(t)
	otherTD, otherTDKey, err := identity.NewRootPEM(identity.CAOptions{TrustDomain: mustTD(t, "example.org")})
	if err != nil {
		t.Fatal(err)
	}
	leafPEM := identitytest.CertPEM(identitytest.NewRawRoot(t, "cluster.local").Leaf(t, "spiffe://cluster.local/ns/a/sa/b").Leaf)
	expired := identitytest.NewUserPKI(t, time.Now().Add(-time.Minute))
	for _, tc := range []struct {
		name  string
		files identity.CAFiles
		want  string
	}{
		{"ca key without ca cert", identity.CAFiles{CAKey: pki.InterKeyPEM}, "ca-key.pem is there but ca-cert.pem is not"},
		{"ca cert without key", identity.CAFiles{CACert: pki.InterPEM, CertChain: pki.ChainPEM}, "ca-cert.pem is there but ca-key.pem is not"},
		{"key of another ca", identity.CAFiles{CACert: pki.InterPEM, CAKey: other.InterKeyPEM, CertChain: pki.ChainPEM}, "does not match"},
		{"intermediate without chain", identity.CAFiles{CACert: pki.InterPEM, CAKey: pki.InterKeyPEM}, "must hold the chain up to the root"},
		{"chain of another root", identity.CAFiles{CACert: pki.InterPEM, CAKey: pki.InterKeyPEM, CertChain: other.RootPEM}, "does not verify"},
		{"chain ending in an intermediate", identity.CAFiles{CACert: pki.InterPEM, CAKey: pki.InterKeyPEM, CertChain: append(pki.InterPEM, other.InterPEM...)}, "not a self-signed root"},
		{"expired intermediate", identity.CAFiles{CACert: expired.InterPEM, CAKey: expired.InterKeyPEM, CertChain: expired.RootPEM}, "does not verify"},
		{"ca cert of another trust domain", identity.CAFiles{CACert: otherTD, CAKey: otherTDKey}, `configured "cluster.local"`},
		{"extra root that is a leaf", identity.CAFiles{RootCert: rootCert, RootKey: rootKey, ExtraRoots: leafPEM}, "not a CA certificate"},
		{"extra root of another trust domain", identity.CAFiles{RootCert: rootCert, RootKey: rootKey, ExtraRoots: otherTD}, `configured "cluster.local"`},
		{"extra roots garbage", identity.CAFiles{RootCert: rootCert, RootKey: rootKey, ExtraRoots: []byte("not pem")}, "extra-roots.pem: no PEM certificate"},
		{"extra roots with a key", identity.CAFiles{RootCert: rootCert, RootKey: rootKey, ExtraRoots: rootKey}, "unexpected PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.LoadCAFiles(tc.files, identity.CAOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadCAFiles error = %v, want containing %q", err, tc.want)
			}
		})
	}
}

// The three steps of a rotation in a CA dir, as docs/operations.md gives them.
func TestLoadOrCreateCARotationSteps(t *testing.T) {
	dir := t.TempDir()
	load := func() *identity.CA {
		t.Helper()
		ca, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
		if err != nil {
			t.Fatalf("LoadOrCreateCA: %v", err)
		}
		return ca
	}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := load().SignerRoot()
	oldPeer := signChain(t, load(), "a", "old")
	pki := identitytest.NewUserPKI(t, time.Now().Add(365*24*time.Hour))

	// 1: trust the new root too; the old one still signs.
	write("extra-roots.pem", pki.RootPEM)
	ca := load()
	if !ca.SignerRoot().Equal(old) || len(ca.Bundle().X509Authorities()) != 2 {
		t.Fatalf("step 1: signer %s, %d roots; want the old root signing and two roots", ca.SignerRoot().Subject, len(ca.Bundle().X509Authorities()))
	}

	// 2: the new CA signs; the old root is still trusted (root-cert.pem is still there).
	write("ca-cert.pem", pki.InterPEM)
	write("ca-key.pem", pki.InterKeyPEM)
	write("cert-chain.pem", pki.ChainPEM)
	ca = load()
	newPeer := signChain(t, ca, "b", "new")
	if _, err := identity.VerifyPeer(newPeer, onlyRoot(pki.Root)); err != nil {
		t.Fatalf("step 2: new certificates do not chain to the new root: %v", err)
	}
	if _, err := identity.VerifyPeer(oldPeer, ca.Bundle()); err != nil {
		t.Fatalf("step 2: a certificate of the old root is refused before every certificate moved: %v", err)
	}

	// 3: the old root goes.
	for _, f := range []string{"root-cert.pem", "root-key.pem", "extra-roots.pem"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	ca = load()
	if roots := ca.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(pki.Root) {
		t.Fatalf("step 3: bundle has %d roots, want the new root only", len(roots))
	}
	if _, err := identity.VerifyPeer(oldPeer, ca.Bundle()); !errors.Is(err, identity.ErrUntrustedChain) {
		t.Fatalf("step 3: a certificate of the removed root: VerifyPeer = %v, want ErrUntrustedChain", err)
	}
	if _, err := identity.VerifyPeer(signChain(t, ca, "c", "c"), ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "root-key.pem")); err == nil {
		t.Fatal("a dir with a signing CA got a new root-key.pem")
	}
}

func mustTD(t testing.TB, name string) spiffeid.TrustDomain {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		t.Fatal(err)
	}
	return td
}

// Refresh renews one certificate; when it comes from a new signing CA, the others follow
// within SignerChangeSpread instead of at their half-life. Without a new signer nothing else
// is renewed early.
func TestManagerFollowsSignerChange(t *testing.T) {
	const spread = 10 * time.Second
	h := newHarness(t, identity.ManagerOptions{SignerChangeSpread: spread})
	a, b := mustID(t, "shop", "a"), mustID(t, "shop", "b")
	h.cert(a)
	h.call(a)
	h.cert(b)
	h.call(b)

	// Same signer: one renewal, nothing else.
	h.clock.Advance(time.Second)
	h.m.Refresh()
	first := <-h.signer.calls
	other := a
	if first == a {
		other = b
	}
	wait.Until(t, maxWait, "refreshed", func() error {
		if h.state(first).NextFetch.Before(h.clock.Now().Add(time.Hour)) {
			return errors.New("not renewed yet")
		}
		return nil
	})
	if next := h.state(other).NextFetch; next.Before(h.clock.Now().Add(time.Hour)) {
		t.Fatalf("%s renewal moved to %s without a signer change", other, next)
	}
	h.noCall()

	// The CA restarted with a new signer.
	next := newCA(t, identity.CAOptions{Clock: h.clock})
	h.signer.setCA(next)
	h.clock.Advance(time.Second)
	h.m.Refresh()
	got := <-h.signer.calls
	if got != other {
		t.Fatalf("Refresh renewed %s, want the one due soonest (%s)", got, other)
	}
	now := h.clock.Now()
	dl := h.timer(func(dl time.Time) bool { return dl.After(now) && !dl.After(now.Add(spread)) })
	h.clock.Set(dl)
	h.call(first)
	for _, id := range []spiffeid.ID{a, b} {
		wait.Until(t, maxWait, id.String()+" moved to the new signer", func() error {
			_, err := identity.VerifyPeerAt(h.cert(id).Certificate, next.Bundle(), h.clock.Now())
			return err
		})
	}
}

// BundlePEM, from the files alone, gives the bundle the CA of the same files sends.
func TestBundlePEMMatchesCA(t *testing.T) {
	oldCert, oldKey := newRootPEM(t)
	newCert, newKey := newRootPEM(t)
	pki := identitytest.NewUserPKI(t, time.Now().Add(time.Hour))
	for name, f := range map[string]identity.CAFiles{
		"ambit root":          {RootCert: oldCert, RootKey: oldKey},
		"extra root":          {RootCert: oldCert, RootKey: oldKey, ExtraRoots: append(bytes.Clone(newCert), pki.RootPEM...)},
		"new self-signed ca":  {RootCert: oldCert, RootKey: oldKey, CACert: newCert, CAKey: newKey},
		"user's intermediate": {RootCert: oldCert, CACert: pki.InterPEM, CAKey: pki.InterKeyPEM, CertChain: pki.ChainPEM, ExtraRoots: pki.RootPEM},
	} {
		got, err := identity.BundlePEM(f)
		if err != nil {
			t.Fatalf("%s: BundlePEM: %v", name, err)
		}
		if want := loadFiles(t, f).RootPEM(); !bytes.Equal(got, want) {
			t.Errorf("%s: BundlePEM holds %d roots, the CA sends %d (or in another order)", name, len(parsePEM(t, got)), len(parsePEM(t, want)))
		}
	}
	if _, err := identity.BundlePEM(identity.CAFiles{}); err == nil {
		t.Fatal("BundlePEM of no files succeeded")
	}
}

// A dir with extra-roots.pem but no root yet: the controller creates its root, root-cert.pem
// holds that root alone, and both are trusted after a restart.
func TestLoadOrCreateCAWithExtraRootsFirst(t *testing.T) {
	dir := t.TempDir()
	extra, _ := newRootPEM(t)
	if err := os.WriteFile(filepath.Join(dir, "extra-roots.pem"), extra, 0o600); err != nil {
		t.Fatal(err)
	}
	created, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
	if err != nil || len(parsePEM(t, b)) != 1 || !parsePEM(t, b)[0].Equal(created.SignerRoot()) {
		t.Fatalf("root-cert.pem holds %d certificates (%v), want the new root alone", len(parsePEM(t, b)), err)
	}
	loaded, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	if !bytes.Equal(loaded.RootPEM(), created.RootPEM()) || len(loaded.Bundle().X509Authorities()) != 2 {
		t.Fatal("after a restart the CA does not trust its root and the extra root")
	}
}

// A second rotation, away from a ca-cert.pem, as docs/operations.md gives it: in step 2 the
// old root (the first certificate of the bundle) is appended to extra-roots.pem, since it
// leaves the bundle with the old ca-cert.pem and cert-chain.pem.
func TestLoadOrCreateCASecondRotation(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	load := func() *identity.CA {
		t.Helper()
		ca, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
		if err != nil {
			t.Fatalf("LoadOrCreateCA: %v", err)
		}
		return ca
	}
	first, second := identitytest.NewUserPKI(t, time.Now().Add(time.Hour)), identitytest.NewUserPKI(t, time.Now().Add(time.Hour))
	write("ca-cert.pem", first.InterPEM)
	write("ca-key.pem", first.InterKeyPEM)
	write("cert-chain.pem", first.ChainPEM)
	ca := load()
	oldPeer := signChain(t, ca, "a", "old")
	oldRoot := parsePEM(t, ca.RootPEM())[0]
	if !oldRoot.Equal(first.Root) {
		t.Fatal("the bundle does not start with the signing CA's root")
	}

	write("extra-roots.pem", second.RootPEM) // 1
	if n := len(load().Bundle().X509Authorities()); n != 2 {
		t.Fatalf("step 1: %d roots, want 2", n)
	}
	write("ca-cert.pem", second.InterPEM) // 2
	write("ca-key.pem", second.InterKeyPEM)
	write("cert-chain.pem", second.ChainPEM)
	write("extra-roots.pem", append(bytes.Clone(second.RootPEM), identitytest.CertPEM(oldRoot)...))
	ca = load()
	if _, err := identity.VerifyPeer(oldPeer, ca.Bundle()); err != nil {
		t.Fatalf("step 2: a certificate of the old root is refused: %v", err)
	}
	if _, err := identity.VerifyPeer(signChain(t, ca, "b", "new"), onlyRoot(second.Root)); err != nil {
		t.Fatalf("step 2: new certificates do not chain to the new root: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "extra-roots.pem")); err != nil { // 3
		t.Fatal(err)
	}
	ca = load()
	if roots := ca.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(second.Root) {
		t.Fatalf("step 3: %d roots, want the new root only", len(roots))
	}
	if _, err := identity.VerifyPeer(oldPeer, ca.Bundle()); !errors.Is(err, identity.ErrUntrustedChain) {
		t.Fatalf("step 3: a certificate of the removed root: %v", err)
	}
}
