package identity_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
)

func TestVerifyPeer(t *testing.T) {
	ca := newCA(t, identity.CAOptions{})
	id := mustID(t, "default", "web")
	good := sign(t, ca, id, time.Hour)

	otherTD := newCA(t, identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("other.example")})
	otherCA := newCA(t, identity.CAOptions{})

	past := identitytest.NewFakeClock(time.Now().Add(-48 * time.Hour))
	pastCA := newCA(t, identity.CAOptions{Clock: past})

	key := newKey(t)
	noURI := selfSigned(t, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "web"}, DNSNames: []string{"web"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, key)

	all := []error{identity.ErrNoCertificate, identity.ErrNotSVID, identity.ErrUnknownTrustDomain, identity.ErrUntrustedChain, identity.ErrCertificateExpired}
	tests := []struct {
		name    string
		chain   [][]byte
		bundles x509bundle.Source
		wantErr error
		msg     string
	}{
		{name: "ok", chain: [][]byte{good.Raw}, bundles: ca.Bundle()},
		{name: "ok via set", chain: [][]byte{good.Raw}, bundles: x509bundle.NewSet(otherTD.Bundle(), ca.Bundle())},
		{name: "no certificate", chain: nil, bundles: ca.Bundle(), wantErr: identity.ErrNoCertificate},
		{name: "other trust domain", chain: [][]byte{sign(t, otherTD, spiffeid.RequireFromString("spiffe://other.example/ns/a/sa/b"), time.Hour).Raw}, bundles: ca.Bundle(), wantErr: identity.ErrUnknownTrustDomain, msg: `"other.example"`},
		{name: "untrusted root", chain: [][]byte{sign(t, otherCA, id, time.Hour).Raw}, bundles: ca.Bundle(), wantErr: identity.ErrUntrustedChain, msg: "unknown authority"},
		{name: "expired", chain: [][]byte{sign(t, pastCA, id, time.Hour).Raw}, bundles: pastCA.Bundle(), wantErr: identity.ErrCertificateExpired, msg: id.String()},
		{name: "garbage", chain: [][]byte{[]byte("nope")}, bundles: ca.Bundle(), wantErr: identity.ErrNotSVID},
		{name: "no uri san", chain: [][]byte{noURI.Raw}, bundles: ca.Bundle(), wantErr: identity.ErrNotSVID, msg: "no URI SAN"},
		{name: "ca as leaf", chain: [][]byte{ca.Bundle().X509Authorities()[0].Raw}, bundles: ca.Bundle(), wantErr: identity.ErrNotSVID, msg: "CA flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := identity.VerifyPeer(tt.chain, tt.bundles)
			if tt.wantErr == nil {
				if err != nil || got != id {
					t.Fatalf("VerifyPeer = %s, %v; want %s", got, err, id)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("VerifyPeer error = %v, want %v containing %q", err, tt.wantErr, tt.msg)
			}
			for _, other := range all {
				if other != tt.wantErr && errors.Is(err, other) {
					t.Fatalf("VerifyPeer error %v is also %v; errors must be distinct", err, other)
				}
			}
			if !got.IsZero() {
				t.Fatalf("VerifyPeer returned id %s with an error", got)
			}
		})
	}
}

func selfSigned(t *testing.T, tmpl *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
