package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCSRSize caps the DER size of a CSR. A P-256 CSR with one URI SAN is a few
// hundred bytes; the cap keeps a hostile client from making the CA parse
// megabytes of ASN.1.
const MaxCSRSize = 4 << 10

// ErrInvalidCSR is wrapped by every error about a malformed or unacceptable CSR,
// so the CA's gRPC edge can map it to InvalidArgument.
var ErrInvalidCSR = errors.New("invalid csr")

// ParseCSR parses and validates a DER CSR and returns the SPIFFE ID it asks
// for. Only two things in a CSR matter to the CA, the key and the ID, so
// everything else that could smuggle in authority (DNS, IP or email SANs, a
// second URI) is rejected rather than ignored. Subject and requested extensions
// are ignored: the CA builds the certificate from its own template.
func ParseCSR(der []byte) (*x509.CertificateRequest, spiffeid.ID, error) {
	switch {
	case len(der) == 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: empty", ErrInvalidCSR)
	case len(der) > MaxCSRSize:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %d bytes exceeds the %d byte limit", ErrInvalidCSR, len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: parse: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: signature: %w", ErrInvalidCSR, err)
	}
	if err := checkP256(csr.PublicKey); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	switch {
	case len(csr.DNSNames) > 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: dns SANs are not allowed, got %q", ErrInvalidCSR, csr.DNSNames)
	case len(csr.IPAddresses) > 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: ip SANs are not allowed, got %v", ErrInvalidCSR, csr.IPAddresses)
	case len(csr.EmailAddresses) > 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: email SANs are not allowed, got %q", ErrInvalidCSR, csr.EmailAddresses)
	case len(csr.URIs) != 1:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: want exactly one URI SAN, got %d", ErrInvalidCSR, len(csr.URIs))
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: URI SAN is not a spiffe id: %w", ErrInvalidCSR, err)
	}
	return csr, id, nil
}

// CreateCSR returns a DER CSR for id signed with key; the counterpart of ParseCSR.
func CreateCSR(key *ecdsa.PrivateKey, id spiffeid.ID) ([]byte, error) {
	if key == nil {
		return nil, errors.New("create csr: nil key")
	}
	if id.IsZero() {
		return nil, errors.New("create csr: empty spiffe id")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: []*url.URL{id.URL()},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create csr for %s: %w", id, err)
	}
	return der, nil
}

func checkP256(pub any) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("key must be ECDSA P-256, got %T", pub)
	}
	if k.Curve != elliptic.P256() {
		return fmt.Errorf("key must be ECDSA P-256, got curve %s", k.Curve.Params().Name)
	}
	return nil
}
