package identity

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// LoadBundle reads a PEM file of root certificates (the mesh root a proxy gets with
// --root-cert) into a bundle for td.
func LoadBundle(td spiffeid.TrustDomain, path string) (*x509bundle.Bundle, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read root certificate: %w", err)
	}
	var roots []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("root certificate %s: %w", path, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("root certificate %s: no PEM certificate in it", path)
	}
	return x509bundle.FromX509Authorities(td, roots), nil
}
