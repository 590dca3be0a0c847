package identity_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"ambit.dev/mesh/identity"
)

func TestSignLeaf(t *testing.T) {
	ca, clk := fakeCA(t)
	id := mustID(t, "default", "web")
	leaf := sign(t, ca, id, 0)

	if got, err := identity.VerifyPeerAt([][]byte{leaf.Raw}, ca.Bundle(), clk.Now()); err != nil || got != id {
		t.Fatalf("VerifyPeer = %s, %v; want %s", got, err, id)
	}
	root := ca.Bundle().X509Authorities()[0]
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(root), CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			t.Fatalf("leaf does not verify for %v: %v", eku, err)
		}
	}

	checks := []struct {
		name string
		ok   bool
	}{
		{"one URI SAN equal to the id", len(leaf.URIs) == 1 && leaf.URIs[0].String() == id.String()},
		{"no DNS/IP/email SANs", len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) == 0},
		{"empty subject", leaf.Subject.CommonName == "" && len(leaf.Subject.Organization) == 0},
		{"not a CA", !leaf.IsCA && leaf.BasicConstraintsValid},
		{"key usage digital signature only", leaf.KeyUsage == x509.KeyUsageDigitalSignature},
		{"ext key usage server+client", len(leaf.ExtKeyUsage) == 2 && leaf.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth && leaf.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth},
		{"ecdsa sha256 signature", leaf.SignatureAlgorithm == x509.ECDSAWithSHA256},
		{"p256 key", isP256(leaf.PublicKey)},
		{"authority key id = root subject key id", len(root.SubjectKeyId) > 0 && bytes.Equal(leaf.AuthorityKeyId, root.SubjectKeyId)},
		{"serial is random 128-bit", leaf.SerialNumber.Sign() > 0 && leaf.SerialNumber.BitLen() > 64 && leaf.SerialNumber.BitLen() <= 128},
		{"not before backdated 1m", leaf.NotBefore.Equal(t0.Add(-time.Minute))},
		{"default ttl 24h", leaf.NotAfter.Equal(t0.Add(24 * time.Hour))},
		{"root is p256 and valid 10y", isP256(root.PublicKey) && root.NotAfter.Equal(t0.Add(identity.RootTTL))},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("leaf: %s: failed", c.name)
		}
	}
	if other := sign(t, ca, id, 0); other.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("two leaves share serial %s", leaf.SerialNumber)
	}
}

func TestSignVerifiesWithVerifyPeer(t *testing.T) {
	ca := newCA(t, identity.CAOptions{})
	id := mustID(t, "default", "web")
	leaf := sign(t, ca, id, time.Hour)
	got, err := identity.VerifyPeer([][]byte{leaf.Raw}, ca.Bundle())
	if err != nil {
		t.Fatalf("VerifyPeer: %v", err)
	}
	if got != id {
		t.Fatalf("VerifyPeer = %s, want %s", got, id)
	}
}

func TestSignTTL(t *testing.T) {
	ca, _ := fakeCA(t)
	id := mustID(t, "default", "web")
	tests := []struct {
		ttl     time.Duration
		want    time.Duration // lifetime from issuance
		wantErr error
	}{
		{ttl: 0, want: identity.DefaultCertTTL},
		{ttl: time.Hour, want: time.Hour},
		{ttl: identity.DefaultMaxCertTTL, want: identity.DefaultMaxCertTTL},
		{ttl: identity.DefaultMaxCertTTL + time.Second, wantErr: identity.ErrInvalidTTL},
		{ttl: -time.Second, wantErr: identity.ErrInvalidTTL},
	}
	for _, tt := range tests {
		t.Run(tt.ttl.String(), func(t *testing.T) {
			chain, err := ca.Sign(csrFor(t, id), id, tt.ttl)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Sign(ttl %s) error = %v, want %v", tt.ttl, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			leaf, _ := x509.ParseCertificate(chain[0])
			if got := leaf.NotAfter.Sub(t0); got != tt.want {
				t.Fatalf("lifetime = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSignNeverOutlivesRoot(t *testing.T) {
	ca, clk := fakeCA(t)
	rootNotAfter := ca.Bundle().X509Authorities()[0].NotAfter
	clk.Set(rootNotAfter.Add(-time.Hour))
	leaf := sign(t, ca, mustID(t, "a", "b"), 24*time.Hour)
	if !leaf.NotAfter.Equal(rootNotAfter) {
		t.Fatalf("leaf NotAfter = %s, want the root's %s", leaf.NotAfter, rootNotAfter)
	}
}

func TestCAOptionsValidation(t *testing.T) {
	tests := []struct {
		name string
		opts identity.CAOptions
		want string
	}{
		{"default above max", identity.CAOptions{DefaultTTL: 2 * time.Hour, MaxTTL: time.Hour}, "exceeds MaxTTL"},
		{"negative default", identity.CAOptions{DefaultTTL: -time.Hour}, "negative"},
		{"negative max", identity.CAOptions{MaxTTL: -time.Hour}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := identity.NewCA(tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewCA error = %v, want containing %q", err, tt.want)
			}
		})
	}
	ca := newCA(t, identity.CAOptions{})
	if ca.TrustDomain().Name() != identity.DefaultTrustDomain {
		t.Fatalf("default trust domain = %s", ca.TrustDomain())
	}
}

func TestSignRejects(t *testing.T) {
	ca, _ := fakeCA(t)
	want := mustID(t, "default", "web")
	other := mustID(t, "default", "db")
	key := newKey(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	good := csrFor(t, want)
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0x01

	tests := []struct {
		name    string
		csr     []byte
		want    spiffeid.ID
		wantErr error
		msg     string
	}{
		{"different id", csrFor(t, other), want, identity.ErrIdentityMismatch, "csr asks for " + other.String()},
		{"foreign trust domain", csrFor(t, spiffeid.RequireFromString("spiffe://evil.org/ns/default/sa/web")), spiffeid.RequireFromString("spiffe://evil.org/ns/default/sa/web"), identity.ErrForeignTrustDomain, "evil.org"},
		{"extra dns san", rawCSR(t, key, []string{want.String()}, []string{"web.default.svc"}, nil, nil), want, identity.ErrInvalidCSR, "dns SANs are not allowed"},
		{"extra ip san", rawCSR(t, key, []string{want.String()}, nil, []net.IP{net.IPv4(10, 0, 0, 1)}, nil), want, identity.ErrInvalidCSR, "ip SANs are not allowed"},
		{"email san", rawCSR(t, key, []string{want.String()}, nil, nil, []string{"a@b.c"}), want, identity.ErrInvalidCSR, "email SANs are not allowed"},
		{"second uri", rawCSR(t, key, []string{want.String(), other.String()}, nil, nil, nil), want, identity.ErrInvalidCSR, "exactly one URI SAN, got 2"},
		{"no uri", rawCSR(t, key, nil, nil, nil, nil), want, identity.ErrInvalidCSR, "exactly one URI SAN, got 0"},
		{"non-spiffe uri", rawCSR(t, key, []string{"https://cluster.local/ns/default/sa/web"}, nil, nil, nil), want, identity.ErrInvalidCSR, "not a spiffe id"},
		{"rsa key", rawCSR(t, rsaKey, []string{want.String()}, nil, nil, nil), want, identity.ErrInvalidCSR, "ECDSA P-256, got *rsa.PublicKey"},
		{"p384 key", rawCSR(t, p384, []string{want.String()}, nil, nil, nil), want, identity.ErrInvalidCSR, "ECDSA P-256, got curve P-384"},
		{"bad signature", badSig, want, identity.ErrInvalidCSR, "signature"},
		{"garbage", []byte("definitely not a csr"), want, identity.ErrInvalidCSR, "parse"},
		{"empty", nil, want, identity.ErrInvalidCSR, "empty"},
		{"too big", make([]byte, identity.MaxCSRSize+1), want, identity.ErrInvalidCSR, "limit"},
		{"trailing data", append(bytes.Clone(good), 0), want, identity.ErrInvalidCSR, "parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := ca.Sign(tt.csr, tt.want, 0)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Sign error = %v, want %v containing %q", err, tt.wantErr, tt.msg)
			}
			if chain != nil {
				t.Fatalf("Sign returned a chain with an error")
			}
		})
	}
	if _, err := ca.Sign(good, want, 0); err != nil {
		t.Fatalf("control: Sign(good) = %v", err)
	}
}

func TestCAImplementsSigner(t *testing.T) {
	ca := newCA(t, identity.CAOptions{})
	var s identity.Signer = ca
	id := mustID(t, "ns1", "sa1")
	chain, err := s.CreateCertificate(t.Context(), id, csrFor(t, id), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := identity.VerifyPeer(chain, ca.Bundle()); err != nil || got != id {
		t.Fatalf("VerifyPeer = %s, %v", got, err)
	}
}

func TestBundleIsACopy(t *testing.T) {
	ca := newCA(t, identity.CAOptions{})
	other := newCA(t, identity.CAOptions{})
	b := ca.Bundle()
	b.AddX509Authority(other.Bundle().X509Authorities()[0])
	if n := len(ca.Bundle().X509Authorities()); n != 1 {
		t.Fatalf("mutating a returned bundle changed the CA's: %d authorities", n)
	}
	block, _ := pem.Decode(ca.RootPEM())
	if block == nil || !bytes.Equal(block.Bytes, ca.Bundle().X509Authorities()[0].Raw) {
		t.Fatal("RootPEM does not hold the bundle's root")
	}
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca1, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, "root-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("root-key.pem mode = %v, want 0600", st.Mode().Perm())
	}
	ca2, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if !bytes.Equal(ca1.RootPEM(), ca2.RootPEM()) {
		t.Fatal("second LoadOrCreateCA made a new root")
	}
	// A certificate from before the restart verifies after it, and the
	// loaded key really signs.
	id := mustID(t, "default", "web")
	for _, c := range []struct{ signer, verifier *identity.CA }{{ca1, ca2}, {ca2, ca1}} {
		leaf := sign(t, c.signer, id, 0)
		if _, err := identity.VerifyPeer([][]byte{leaf.Raw}, c.verifier.Bundle()); err != nil {
			t.Fatalf("VerifyPeer across restart: %v", err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("dir has %d entries, want 2 (no temp files left)", len(entries))
	}
}

func TestLoadOrCreateCAErrors(t *testing.T) {
	other := t.TempDir()
	if _, err := identity.LoadOrCreateCA(other, identity.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := os.ReadFile(filepath.Join(other, "root-key.pem"))
	ecKeyDER, _ := x509.MarshalECPrivateKey(newKey(t))
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKCS8PrivateKey(p384)

	tests := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   string
	}{
		{"corrupt cert", func(t *testing.T, dir string) { write(t, dir, "root-cert.pem", []byte("garbage")) }, "want exactly one PEM CERTIFICATE block"},
		{"corrupt cert der", func(t *testing.T, dir string) {
			write(t, dir, "root-cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))
		}, "root-cert.pem: x509"},
		{"corrupt key", func(t *testing.T, dir string) { write(t, dir, "root-key.pem", []byte("garbage")) }, "root-key.pem: no PEM block"},
		{"truncated key", func(t *testing.T, dir string) {
			write(t, dir, "root-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0x03}}))
		}, "root-key.pem: asn1"},
		{"key of another root", func(t *testing.T, dir string) { write(t, dir, "root-key.pem", otherKey) }, "does not match"},
		{"sec1 key of another root", func(t *testing.T, dir string) {
			write(t, dir, "root-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecKeyDER}))
		}, "does not match"},
		{"p384 key", func(t *testing.T, dir string) {
			write(t, dir, "root-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p384DER}))
		}, "P-256"},
		{"cert only", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "root-key.pem")) }, "root-cert.pem exists but"},
		{"key only", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "root-cert.pem")) }, "root-key.pem exists but"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := identity.LoadOrCreateCA(dir, identity.CAOptions{}); err != nil {
				t.Fatal(err)
			}
			tt.mutate(t, dir)
			before := snapshot(t, dir)
			_, err := identity.LoadOrCreateCA(dir, identity.CAOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadOrCreateCA error = %v, want containing %q", err, tt.want)
			}
			if after := snapshot(t, dir); after != before {
				t.Fatalf("LoadOrCreateCA changed the directory:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	t.Run("other trust domain", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := identity.LoadOrCreateCA(dir, identity.CAOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := identity.LoadOrCreateCA(dir, identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
		if err == nil || !strings.Contains(err.Error(), `root is for trust domain "cluster.local", configured "example.org"`) {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("expired root", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := identity.LoadOrCreateCA(dir, identity.CAOptions{}); err != nil {
			t.Fatal(err)
		}
		_, clk := fakeCA(t)
		clk.Set(time.Now().Add(identity.RootTTL + time.Hour))
		_, err := identity.LoadOrCreateCA(dir, identity.CAOptions{Clock: clk})
		if err == nil || !strings.Contains(err.Error(), "root expired") {
			t.Fatalf("error = %v", err)
		}
	})
}

func write(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// snapshot returns the directory's names and contents as one string.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name() + "=" + string(data) + ";")
	}
	return b.String()
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func isP256(pub any) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}

func BenchmarkSign(b *testing.B) {
	ca := newCA(b, identity.CAOptions{})
	id := mustID(b, "default", "web")
	csr := csrFor(b, id)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Sign(csr, id, 0); err != nil {
			b.Fatal(err)
		}
	}
}
