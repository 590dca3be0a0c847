package identity_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"ambit.dev/mesh/identity"
)

func TestParseCSRRoundTrip(t *testing.T) {
	id := mustID(t, "default", "web")
	key := newKey(t)
	der, err := identity.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, got, err := identity.ParseCSR(der)
	if err != nil {
		t.Fatalf("ParseCSR: %v", err)
	}
	if got != id {
		t.Fatalf("ParseCSR id = %s, want %s", got, id)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Fatal("ParseCSR returned a different key")
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	id := mustID(f, "default", "web")
	good, err := identity.CreateCSR(key, id)
	if err != nil {
		f.Fatal(err)
	}
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 1
	f.Add(good)
	f.Add(badSig)
	f.Add(good[:len(good)/2])
	f.Add(append(bytes.Clone(good), 0))
	f.Add(rawCSR(f, key, []string{id.String()}, []string{"web.default"}, nil, nil))
	f.Add(rawCSR(f, key, []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://x/y"}, nil, nil, nil))
	f.Add(rawCSR(f, p384, []string{id.String()}, nil, nil, nil))
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, got, err := identity.ParseCSR(der)
		if err != nil {
			if !errors.Is(err, identity.ErrInvalidCSR) {
				t.Fatalf("error %v does not wrap ErrInvalidCSR", err)
			}
			return
		}
		if got.IsZero() || csr == nil || !isP256(csr.PublicKey) || len(csr.URIs) != 1 {
			t.Fatalf("accepted CSR violates the rules: id %q, key %T, %d URIs", got, csr.PublicKey, len(csr.URIs))
		}
	})
}
