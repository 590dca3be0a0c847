package identity

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// NewRootPEM creates a fresh root for opts.TrustDomain and returns its certificate and its
// PKCS#8 key in PEM form, for a caller that persists the root somewhere other than a folder
// (the controller keeps it in a Kubernetes Secret). LoadCA turns the pair into a CA.
func NewRootPEM(opts CAOptions) (certPEM, keyPEM []byte, err error) {
	ca, err := NewCA(opts)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("new root: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.signer.Raw}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// LoadCA returns the CA of a root certificate and key in PEM form, checked as LoadOrCreateCA
// checks root-cert.pem and root-key.pem: one CA certificate, an ECDSA P-256 key that matches
// it, the configured trust domain, not expired.
func LoadCA(certPEM, keyPEM []byte, opts CAOptions) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return loadCAFiles(opts, CAFiles{RootCert: certPEM, RootKey: keyPEM})
}
