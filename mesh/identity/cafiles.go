package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CAFiles is the PEM material of a CA as a folder (LoadOrCreateCA) or a Kubernetes Secret
// holds it, one field per file; nil is a file that is not there. The names are those of
// Istio's plugged-in CA (cacerts), so material made for Istio fits unchanged.
//
// Rotating the root is three changes to these files, each followed by a controller restart
// (docs/operations.md): add the new root to ExtraRoots; install the new signing CA in CACert,
// CAKey and CertChain while the old root stays (in RootCert or ExtraRoots); remove the old
// root.
type CAFiles struct {
	// RootCert and RootKey (root-cert.pem, root-key.pem) are ambit's self-signed root, which
	// the controller creates on its first start. Without CACert, RootCert signs; with it,
	// RootCert is only trusted and RootKey is not read.
	RootCert, RootKey []byte
	// CACert and CAKey (ca-cert.pem, ca-key.pem) are a signing CA the user supplies: an
	// intermediate, or a root. The key is ECDSA P-256. When present, it signs every new
	// certificate.
	CACert, CAKey []byte
	// CertChain (cert-chain.pem) is CACert's chain up to and including its root (a leading
	// copy of CACert is allowed, as Istio writes it). Empty when CACert is a root itself.
	CertChain []byte
	// ExtraRoots (extra-roots.pem) are roots trusted besides the signing CA's: the new root
	// before the switch, the old one after it.
	ExtraRoots []byte
}

// LoadCAFiles returns the CA of files: it signs with CACert when there is one and with
// RootCert otherwise, and trusts the signing CA's root, RootCert and ExtraRoots. Each
// certificate is checked: the signing key matches and is ECDSA P-256, the chain from CACert
// verifies to its root, every trusted certificate is a CA, in the configured trust domain
// (when it names one) and not expired.
func LoadCAFiles(files CAFiles, opts CAOptions) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return loadCAFiles(opts, files)
}

func loadCAFiles(opts CAOptions, f CAFiles) (*CA, error) {
	extra, err := parseExtraRoots(opts, f.ExtraRoots)
	if err != nil {
		return nil, err
	}
	if f.CACert == nil && f.CAKey == nil {
		root, key, err := loadRoot(opts, f.RootCert, f.RootKey)
		if err != nil {
			return nil, err
		}
		return newCA(opts, root, key, nil, root, extra), nil
	}
	switch {
	case f.CACert == nil:
		return nil, fmt.Errorf("%s is there but %s is not", caKeyFile, caCertFile)
	case f.CAKey == nil:
		return nil, fmt.Errorf("%s is there but %s is not", caCertFile, caKeyFile)
	}
	signer, key, err := loadSigningCA(opts, f.CACert, f.CAKey, f.CertChain)
	if err != nil {
		return nil, err
	}
	intermediates, root := signer.intermediates, signer.root
	if f.RootCert != nil {
		old, err := parseCerts(f.RootCert, rootCertFile)
		if err != nil {
			return nil, err
		}
		if len(old) != 1 {
			return nil, fmt.Errorf("%s: want exactly one PEM CERTIFICATE block", rootCertFile)
		}
		if err := checkTrusted(opts, old[0], rootCertFile); err != nil {
			return nil, err
		}
		extra = append(extra, old[0])
	}
	return newCA(opts, signer.cert, key, intermediates, root, extra), nil
}

type signingCA struct {
	cert          *x509.Certificate
	intermediates []*x509.Certificate // cert first, up to and not including root; nil when cert is root
	root          *x509.Certificate
}

// loadSigningCA checks the user's signing CA: ca-cert.pem, its key and cert-chain.pem.
func loadSigningCA(opts CAOptions, certPEM, keyPEM, chainPEM []byte) (signingCA, *ecdsa.PrivateKey, error) {
	certs, err := parseCerts(certPEM, caCertFile)
	if err != nil {
		return signingCA{}, nil, err
	}
	if len(certs) != 1 {
		return signingCA{}, nil, fmt.Errorf("%s: want exactly one PEM CERTIFICATE block, found %d", caCertFile, len(certs))
	}
	cert := certs[0]
	key, err := parseKey(keyPEM, caKeyFile)
	if err != nil {
		return signingCA{}, nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return signingCA{}, nil, fmt.Errorf("%s does not match the key in %s", caKeyFile, caCertFile)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return signingCA{}, nil, fmt.Errorf("%s: not a CA certificate that may sign certificates", caCertFile)
	}
	if err := checkTrustDomain(opts, cert, caCertFile); err != nil {
		return signingCA{}, nil, err
	}
	chain, err := parseCerts(chainPEM, certChainFile)
	if err != nil {
		return signingCA{}, nil, err
	}
	if len(chain) > 0 && chain[0].Equal(cert) {
		chain = chain[1:]
	}
	sc := signingCA{cert: cert}
	if len(chain) == 0 {
		if !selfSigned(cert) {
			return signingCA{}, nil, fmt.Errorf("%s is not a root and %s is missing or empty: it must hold the chain up to the root", caCertFile, certChainFile)
		}
		sc.root = cert
	} else {
		sc.root = chain[len(chain)-1]
		if !selfSigned(sc.root) {
			return signingCA{}, nil, fmt.Errorf("%s: the last certificate (%s) is not a self-signed root", certChainFile, sc.root.Subject)
		}
		sc.intermediates = append([]*x509.Certificate{cert}, chain[:len(chain)-1]...)
	}
	pool := x509.NewCertPool()
	pool.AddCert(sc.root)
	inter := x509.NewCertPool()
	for _, c := range sc.intermediates {
		inter.AddCert(c)
	}
	now := opts.Clock.Now()
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return signingCA{}, nil, fmt.Errorf("%s does not verify to the root of %s: %w", caCertFile, certChainFile, err)
	}
	if err := checkTrusted(opts, sc.root, "root of "+certChainFile); err != nil {
		return signingCA{}, nil, err
	}
	return sc, key, nil
}

// parseExtraRoots parses extra-roots.pem; nil or empty is no extra root.
func parseExtraRoots(opts CAOptions, b []byte) ([]*x509.Certificate, error) {
	roots, err := parseCerts(b, extraRootsFile)
	if err != nil {
		return nil, err
	}
	for i, r := range roots {
		if err := checkTrusted(opts, r, fmt.Sprintf("%s: certificate %d", extraRootsFile, i+1)); err != nil {
			return nil, err
		}
	}
	return roots, nil
}

// checkTrusted checks a certificate that is to be a trust anchor.
func checkTrusted(opts CAOptions, c *x509.Certificate, what string) error {
	if !c.IsCA {
		return fmt.Errorf("%s (%s) is not a CA certificate", what, c.Subject)
	}
	if now := opts.Clock.Now(); now.After(c.NotAfter) {
		return fmt.Errorf("%s (%s) expired at %s", what, c.Subject, c.NotAfter.Format(time.RFC3339))
	}
	return checkTrustDomain(opts, c, what)
}

// checkTrustDomain refuses a CA certificate that names another trust domain in its URI SAN
// (as ambit's root and SPIRE's do); one that names none is for the caller to place.
func checkTrustDomain(opts CAOptions, c *x509.Certificate, what string) error {
	if len(c.URIs) == 1 {
		td, err := spiffeid.TrustDomainFromURI(c.URIs[0])
		if err == nil && td != opts.TrustDomain {
			return fmt.Errorf("%s: for trust domain %q, configured %q", what, td.Name(), opts.TrustDomain.Name())
		}
	}
	return nil
}

// parseCerts parses every PEM block of b, which must all be certificates; text between
// blocks is allowed, as openssl writes it.
func parseCerts(b []byte, name string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: unexpected PEM block %q", name, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", name, len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 && len(bytes.TrimSpace(b)) != 0 {
		return nil, fmt.Errorf("%s: no PEM certificate in it", name)
	}
	return out, nil
}

// parseKey parses an ECDSA P-256 key, PKCS#8 or SEC 1.
func parseKey(keyPEM []byte, name string) (*ecdsa.PrivateKey, error) {
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("%s: no PEM block", name)
	}
	var key any
	var err error
	switch kb.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	default:
		return nil, fmt.Errorf("%s: unexpected PEM block %q", name, kb.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: key must be ECDSA P-256, got %T", name, key)
	}
	if err := checkP256(&ecKey.PublicKey); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return ecKey, nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// Fingerprint names a certificate in logs and dumps: the first 16 hex digits of the SHA-256
// of its DER, as `openssl x509 -noout -fingerprint -sha256` prints it (without colons).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:8])
}

// BundlePEM returns the trust bundle files make, in the order CA.RootPEM gives it (the
// signing CA's root first), without reading or checking keys: what a proxy's --root-cert
// should hold, for a tool that has the files but is not the CA. LoadCAFiles checks them.
func BundlePEM(files CAFiles) ([]byte, error) {
	var roots []*x509.Certificate
	if files.CACert != nil {
		ca, err := parseCerts(files.CACert, caCertFile)
		if err != nil {
			return nil, err
		}
		chain, err := parseCerts(files.CertChain, certChainFile)
		if err != nil {
			return nil, err
		}
		switch {
		case len(chain) > 0:
			roots = append(roots, chain[len(chain)-1])
		case len(ca) == 1:
			roots = append(roots, ca[0])
		}
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{rootCertFile, files.RootCert}, {extraRootsFile, files.ExtraRoots}} {
		cs, err := parseCerts(f.b, f.name)
		if err != nil {
			return nil, err
		}
		roots = append(roots, cs...)
	}
	var out []byte
	for i, r := range roots {
		if slices.ContainsFunc(roots[:i], r.Equal) {
			continue
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no root certificate: neither %s nor %s", rootCertFile, caCertFile)
	}
	return out, nil
}
