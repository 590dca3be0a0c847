package identitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Issue signs a fresh P-256 key for id with ca and returns it as a TLS certificate, the way
// a proxy's Manager would hold it; ttl 0 means the CA's default. It fails the test on error.
func Issue(t testing.TB, ca *identity.CA, id spiffeid.ID, ttl time.Duration) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(csr, id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
}
