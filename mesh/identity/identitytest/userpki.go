package identitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// UserPKI is a CA hierarchy a user brings to the mesh: a root and an intermediate under it,
// made the way openssl or cert-manager would, with no SPIFFE URI on either. The file names of
// the fields' comments are those of a CA dir (docs/operations.md, "Rotating the mesh root").
type UserPKI struct {
	Root, Inter *x509.Certificate
	RootPEM     []byte // root-cert.pem of the new root, or a line of extra-roots.pem
	InterPEM    []byte // ca-cert.pem
	InterKeyPEM []byte // ca-key.pem, PKCS #8
	ChainPEM    []byte // cert-chain.pem: the intermediate, then the root
}

// NewUserPKI makes a fresh UserPKI, its root valid for ten years and its intermediate until
// interNotAfter.
func NewUserPKI(t testing.TB, interNotAfter time.Time) UserPKI {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	mk := func(tmpl, parent *x509.Certificate, pub, signer any) *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rootKey, interKey := key(), key()
	now := time.Now()
	org := []string{"Example Corp"}
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: org, CommonName: "Example Root CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	root := mk(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	inter := mk(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{Organization: org, CommonName: "mesh intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: interNotAfter, IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, root, interKey.Public(), rootKey)
	keyDER, err := x509.MarshalPKCS8PrivateKey(interKey)
	if err != nil {
		t.Fatal(err)
	}
	p := UserPKI{Root: root, Inter: inter, RootPEM: CertPEM(root), InterPEM: CertPEM(inter),
		InterKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}
	p.ChainPEM = CertPEM(inter, root)
	return p
}

// CertPEM encodes certificates as PEM, in order.
func CertPEM(cs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range cs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
