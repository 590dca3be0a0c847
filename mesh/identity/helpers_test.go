package identity_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
)

// t0 is an arbitrary fixed start for fake clocks.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustID(t testing.TB, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newCA(t testing.TB, opts identity.CAOptions) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(opts)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func fakeCA(t testing.TB) (*identity.CA, *identitytest.FakeClock) {
	t.Helper()
	clk := identitytest.NewFakeClock(t0)
	return newCA(t, identity.CAOptions{Clock: clk}), clk
}

func csrFor(t testing.TB, id spiffeid.ID) []byte {
	t.Helper()
	der, err := identity.CreateCSR(newKey(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// rawCSR builds a CSR with arbitrary SANs, for the cases CreateCSR refuses to make.
func rawCSR(t testing.TB, key crypto.Signer, uris []string, dns []string, ips []net.IP, emails []string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: dns, IPAddresses: ips, EmailAddresses: emails}
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sign(t testing.TB, ca *identity.CA, id spiffeid.ID, ttl time.Duration) *x509.Certificate {
	t.Helper()
	chain, err := ca.Sign(csrFor(t, id), id, ttl)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if len(chain) != 1 {
		t.Fatalf("Sign returned %d certificates, want 1 (leaf only)", len(chain))
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
