package peer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"ambit.dev/mesh/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Issue signs a fresh P-256 key for the workload namespace/serviceAccount with the root whose
// root-cert.pem and root-key.pem are in caDir (the lab's CA), and writes the certificate
// followed by the key to file, as each peer reads them. The certificate is the SVID a ztunnel
// would get (the SPIFFE ID as its one URI SAN, a day's lifetime, the same usages) with
// dnsName beside it, the name the peers' clients check: most of them cannot match a URI SAN.
// It returns the SPIFFE ID.
func Issue(caDir, namespace, serviceAccount, dnsName, file string) (string, error) {
	root, rootKey, err := loadRoot(caDir)
	if err != nil {
		return "", err
	}
	td, err := trustDomain(root)
	if err != nil {
		return "", err
	}
	id, err := identity.WorkloadID(td, namespace, serviceAccount)
	if err != nil {
		return "", err
	}
	return id.String(), issue(root, rootKey, id, dnsName, file)
}

func issue(root *x509.Certificate, rootKey crypto.Signer, id spiffeid.ID, dnsName, file string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              []string{dnsName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
	if err != nil {
		return fmt.Errorf("sign %s: %w", id, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	return os.WriteFile(file, out, 0o600)
}

func loadRoot(caDir string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(filepath.Join(caDir, "root-cert.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("lab CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(caDir, "root-key.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("lab CA: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("lab CA %s: no PEM block in root-cert.pem or root-key.pem", caDir)
	}
	root, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("lab CA root: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		if k, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
			return nil, nil, fmt.Errorf("lab CA key: %w", err)
		}
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("lab CA key: %T cannot sign", k)
	}
	return root, signer, nil
}

// trustDomain is the trust domain a root names in its SPIFFE URI SAN.
func trustDomain(root *x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, u := range root.URIs {
		if td, err := spiffeid.TrustDomainFromURI(u); err == nil {
			return td, nil
		}
	}
	return spiffeid.TrustDomain{}, fmt.Errorf("lab CA root: no SPIFFE URI SAN names its trust domain")
}
