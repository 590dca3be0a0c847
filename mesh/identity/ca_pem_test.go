package identity_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"ambit.dev/mesh/identity"
)

func TestNewRootPEMLoadCA(t *testing.T) {
	certPEM, keyPEM, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca1, err := identity.LoadCA(certPEM, keyPEM, identity.CAOptions{})
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	ca2, err := identity.LoadCA(certPEM, keyPEM, identity.CAOptions{})
	if err != nil {
		t.Fatalf("LoadCA again: %v", err)
	}
	if !bytes.Equal(ca1.RootPEM(), certPEM) || !bytes.Equal(ca2.RootPEM(), certPEM) {
		t.Fatal("loaded CA's root differs from the PEM it was loaded from")
	}
	// The loaded key really signs for the root.
	leaf := sign(t, ca1, mustID(t, "default", "web"), 0)
	if _, err := identity.VerifyPeer([][]byte{leaf.Raw}, ca2.Bundle()); err != nil {
		t.Fatalf("VerifyPeer: %v", err)
	}

	otherCert, otherKey, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		cert, key []byte
		opts      identity.CAOptions
		want      string
	}{
		{"key of another root", certPEM, otherKey, identity.CAOptions{}, "does not match"},
		{"cert of another root", otherCert, keyPEM, identity.CAOptions{}, "does not match"},
		{"no cert", nil, keyPEM, identity.CAOptions{}, "want exactly one PEM CERTIFICATE block"},
		{"no key", certPEM, nil, identity.CAOptions{}, "no PEM block"},
		{"other trust domain", certPEM, keyPEM, identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")}, `configured "example.org"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.LoadCA(tt.cert, tt.key, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadCA error = %v, want containing %q", err, tt.want)
			}
		})
	}
}
