package caserver

import (
	"crypto/tls"
	"fmt"

	"ambit.dev/mesh/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServerTLS returns the TLS configuration of the controller's gRPC listener: TLS 1.3 only,
// ALPN h2, serving the certificate mgr keeps for id (the controller's identity,
// spiffe://<td>/ns/ambit-system/sa/ambit-controller), which mgr renews at half-life. Create
// mgr with the CA itself as its Signer and run it. Clients authenticate with bearer tokens,
// not certificates, so none is requested.
func ServerTLS(mgr *identity.Manager, id spiffeid.ID) *tls.Config {
	mgr.Prefetch(id)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := mgr.Certificate(hello.Context(), id)
			if err != nil {
				return nil, fmt.Errorf("controller certificate: %w", err)
			}
			return c, nil
		},
	}
}
