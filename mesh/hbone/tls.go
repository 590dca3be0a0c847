package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"ambit.dev/mesh/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const alpnH2 = "h2"

// clientTLS builds the TLS configuration for one outbound connection: present cert, accept
// only a server that chains to the bundle and proves one of the expected identities.
func clientTLS(cert *tls.Certificate, bundle x509bundle.Source, expected []spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{alpnH2},
		Certificates: []tls.Certificate{*cert},
		// Go's hostname verification does not apply to SPIFFE: the chain and the URI SAN
		// are checked by VerifyPeerCertificate below, which runs on every handshake.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := identity.VerifyPeer(raw, bundle)
			if err != nil {
				return &Error{Kind: KindIdentity, Reason: "verify server", Err: err}
			}
			if !slices.Contains(expected, id) {
				return &Error{Kind: KindIdentity, Reason: fmt.Sprintf("server identity %s is not one of the expected %v", id, expected)}
			}
			return nil
		},
	}
}

// serverTLS builds the TLS configuration for the HBONE listener: require a client
// certificate that chains to the bundle of its own trust domain.
func serverTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), bundle x509bundle.Source) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{alpnH2},
		GetCertificate: getCert,
		ClientAuth:     tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if _, err := identity.VerifyPeer(raw, bundle); err != nil {
				return fmt.Errorf("verify client: %w", err)
			}
			return nil
		},
	}
}

// peerIdentity reads the verified identity back out of a finished handshake and checks
// the negotiated protocol.
func peerIdentity(cs tls.ConnectionState) (spiffeid.ID, error) {
	if cs.NegotiatedProtocol != alpnH2 {
		return spiffeid.ID{}, fmt.Errorf("peer did not negotiate ALPN %q (got %q)", alpnH2, cs.NegotiatedProtocol)
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("peer presented no certificate")
	}
	ids := cs.PeerCertificates[0].URIs
	if len(ids) != 1 {
		return spiffeid.ID{}, errors.New("peer certificate must carry exactly one URI SAN")
	}
	return spiffeid.FromURI(ids[0])
}

// unparseableServerCert reports whether a client handshake failed because crypto/tls could
// not parse the server's certificate: a URI SAN with a control byte, for one. crypto/tls
// refuses it before VerifyPeerCertificate runs and says so only in its message; it is an
// identity failure all the same (the server proved no identity), not a dial failure to retry.
func unparseableServerCert(err error) bool {
	return err != nil && strings.Contains(err.Error(), "tls: failed to parse certificate from server")
}
