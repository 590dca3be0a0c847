package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Errors VerifyPeer wraps, so a caller can tell a misconfigured peer from an
// attacker in metrics and logs. go-spiffe reports them all as strings; the
// distinctions are made here.
var (
	ErrNoCertificate      = errors.New("peer presented no certificate")
	ErrNotSVID            = errors.New("peer certificate is not an x509-svid")
	ErrUnknownTrustDomain = errors.New("no trust bundle for the peer's trust domain")
	ErrUntrustedChain     = errors.New("peer certificate chain is not trusted")
	ErrCertificateExpired = errors.New("certificate expired or not yet valid")
)

// VerifyPeer verifies a peer's chain (raw DER, leaf first, as crypto/tls hands
// it to VerifyPeerCertificate) against bundles and returns the peer's SPIFFE
// ID. Matching that ID against what the caller expected is the caller's job.
func VerifyPeer(rawCerts [][]byte, bundles x509bundle.Source) (spiffeid.ID, error) {
	return verifyPeerAt(rawCerts, bundles, time.Now())
}

func verifyPeerAt(rawCerts [][]byte, bundles x509bundle.Source, now time.Time) (spiffeid.ID, error) {
	if len(rawCerts) == 0 {
		return spiffeid.ID{}, fmt.Errorf("verify peer: %w", ErrNoCertificate)
	}
	if bundles == nil {
		return spiffeid.ID{}, errors.New("verify peer: no trust bundle source")
	}
	// Parse once here, rather than with x509svid.ParseAndVerify, so the leaf
	// can be classified without parsing the chain twice per handshake.
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("verify peer: certificate %d: %w: %w", i, ErrNotSVID, err)
		}
		certs[i] = c
	}
	leaf := certs[0]
	if err := checkURISAN(leaf); err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify peer: %w: %w", ErrNotSVID, err)
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify peer: %w: %w", ErrNotSVID, err)
	}
	if _, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain()); err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify peer %s: %w %q", id, ErrUnknownTrustDomain, id.TrustDomain().Name())
	}
	if _, _, err := x509svid.Verify(certs, bundles, x509svid.WithTime(now)); err != nil {
		var invalid x509.CertificateInvalidError
		var unknown x509.UnknownAuthorityError
		switch {
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return spiffeid.ID{}, fmt.Errorf("verify peer %s: %w (valid %s to %s)", id, ErrCertificateExpired,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
		case errors.As(err, &unknown):
			return spiffeid.ID{}, fmt.Errorf("verify peer %s: %w: signed by an unknown authority", id, ErrUntrustedChain)
		case leaf.IsCA || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
			return spiffeid.ID{}, fmt.Errorf("verify peer %s: %w: %w", id, ErrNotSVID, err)
		default:
			return spiffeid.ID{}, fmt.Errorf("verify peer %s: %w: %w", id, ErrUntrustedChain, err)
		}
	}
	return id, nil
}

// checkURISAN refuses a leaf that does not carry exactly one URI SAN, or whose URI holds a
// control byte or space. Go's x509 parser already refuses raw control bytes in a URI and
// go-spiffe refuses a second URI SAN and percent-escapes; this states the rule here, with
// its own message, so that it does not rest on either library's parsing.
func checkURISAN(leaf *x509.Certificate) error {
	if n := len(leaf.URIs); n == 0 {
		return errors.New("certificate contains no URI SAN")
	} else if n > 1 {
		return fmt.Errorf("certificate carries %d URI SANs; an SVID carries exactly one SPIFFE ID", n)
	}
	u := leaf.URIs[0].String()
	for i := 0; i < len(u); i++ {
		if u[i] <= ' ' || u[i] >= 0x7f {
			return fmt.Errorf("URI SAN %q holds a control byte, a space or non-ASCII", u)
		}
	}
	return nil
}
