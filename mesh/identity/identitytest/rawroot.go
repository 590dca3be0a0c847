package identitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// RawRoot is a CA root made by a test, for certificates identity.CA would never issue: a
// leaf whose SAN extension holds whatever URI strings the test writes, byte for byte.
type RawRoot struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	td   spiffeid.TrustDomain
}

// NewRawRoot creates a self-signed root for trust domain td.
func NewRawRoot(t testing.TB, td string) *RawRoot {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root " + td},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &RawRoot{cert: cert, key: key, td: spiffeid.RequireTrustDomainFromString(td)}
}

// Bundle is the trust bundle of the root's trust domain.
func (r *RawRoot) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(r.td, []*x509.Certificate{r.cert})
}

// Leaf signs an SVID-shaped leaf (digital signature, server and client auth) whose SAN
// extension holds exactly the given URI strings, unvalidated: control bytes, several
// SPIFFE IDs, anything. The returned certificate's Leaf is nil when Go cannot parse it.
func (r *RawRoot) Leaf(t testing.TB, uris ...string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]asn1.RawValue, len(uris))
	for i, u := range uris {
		names[i] = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)} // uniformResourceIdentifier
	}
	san, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		NotBefore:       time.Now().Add(-time.Minute),
		NotAfter:        time.Now().Add(time.Hour),
		KeyUsage:        x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, key.Public(), r.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
