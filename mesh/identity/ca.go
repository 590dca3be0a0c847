package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// DefaultCertTTL is the leaf lifetime when the caller asks for none (design: 24 h).
	DefaultCertTTL = 24 * time.Hour
	// DefaultMaxCertTTL bounds what a caller may ask for. A week lets an operator
	// ride out a long control-plane outage with longer certificates, while
	// bounding how long a stolen proxy key stays useful.
	DefaultMaxCertTTL = 7 * 24 * time.Hour
	// RootTTL is the lifetime of a freshly created root. Rotation is a manual,
	// rare operation (remove the files), so the root outlives any deployment.
	RootTTL = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so a peer whose clock is a little behind
	// does not reject a certificate issued a moment ago.
	clockSkew = time.Minute

	rootCertFile   = "root-cert.pem"
	rootKeyFile    = "root-key.pem"
	caCertFile     = "ca-cert.pem"
	caKeyFile      = "ca-key.pem"
	certChainFile  = "cert-chain.pem"
	extraRootsFile = "extra-roots.pem"
)

var (
	// ErrIdentityMismatch means the CSR asks for a different identity than the
	// caller is allowed to get (map to PermissionDenied).
	ErrIdentityMismatch = errors.New("csr identity does not match the authorized identity")
	// ErrForeignTrustDomain means the CA was asked to sign for an identity
	// outside its trust domain.
	ErrForeignTrustDomain = errors.New("identity is outside the ca's trust domain")
	// ErrInvalidTTL means the requested lifetime is negative or above MaxTTL.
	ErrInvalidTTL = errors.New("invalid certificate ttl")
)

// CAOptions configures a CA. Zero fields take the defaults noted on each.
type CAOptions struct {
	// TrustDomain the CA issues for. Default DefaultTrustDomain.
	TrustDomain spiffeid.TrustDomain
	// DefaultTTL is the leaf lifetime when Sign gets ttl 0. Default 24h.
	DefaultTTL time.Duration
	// MaxTTL is the longest lifetime Sign accepts. Default 7 days.
	MaxTTL time.Duration
	// Clock for validity periods. Default RealClock().
	Clock Clock
	// Logger receives one line per issued certificate. Default discards.
	Logger *slog.Logger
}

func (o CAOptions) withDefaults() (CAOptions, error) {
	if o.TrustDomain.IsZero() {
		o.TrustDomain = spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	}
	if o.DefaultTTL == 0 {
		o.DefaultTTL = DefaultCertTTL
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = DefaultMaxCertTTL
	}
	if o.Clock == nil {
		o.Clock = RealClock()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.DefaultTTL < 0:
		return o, fmt.Errorf("ca options: DefaultTTL %s is negative", o.DefaultTTL)
	case o.MaxTTL < 0:
		return o, fmt.Errorf("ca options: MaxTTL %s is negative", o.MaxTTL)
	case o.DefaultTTL > o.MaxTTL:
		return o, fmt.Errorf("ca options: DefaultTTL %s exceeds MaxTTL %s", o.DefaultTTL, o.MaxTTL)
	}
	return o, nil
}

// CA issues X.509-SVIDs. It signs with its signing CA: ambit's self-signed ECDSA P-256 root,
// or a CA the user supplies (an intermediate with its chain, or another root; see
// LoadCAFiles). It trusts the signing CA's root and any extra roots: more than one root while
// the root rotates. It is safe for concurrent use.
type CA struct {
	opts   CAOptions
	signer *x509.Certificate // its key signs the leaves
	key    *ecdsa.PrivateKey
	// chain is the DER of signer and the intermediates above it, up to and not including
	// the root; empty when signer is the root itself.
	chain [][]byte
	// notAfter is the earliest NotAfter of signer, the intermediates and the root: no leaf
	// outlives it.
	notAfter time.Time
	// roots are the trust anchors: the signing CA's root first, then the extra roots.
	roots   []*x509.Certificate
	rootPEM []byte
}

// Signer is what a Manager gets certificates from: a *CA in standalone mode, or
// a client of the controller's CA service. The chain is leaf first and does
// not include the root.
type Signer interface {
	CreateCertificate(ctx context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) (chain [][]byte, err error)
}

var _ Signer = (*CA)(nil)

// NewCA creates a CA with a fresh in-memory root.
func NewCA(opts CAOptions) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	key, certDER, err := newRoot(opts.TrustDomain, opts.Clock.Now())
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("new ca: parse root: %w", err)
	}
	return newCA(opts, root, key, nil, root, nil), nil
}

// LoadOrCreateCA loads the CA in dir, or creates ambit's root there (root-cert.pem and
// root-key.pem, key mode 0600) if dir holds no signing CA, so a controller restart keeps its
// root and every issued certificate stays valid. Besides the root dir may hold the files
// LoadCAFiles describes: a signing CA of the user's (ca-cert.pem, ca-key.pem, cert-chain.pem),
// which then signs instead of root-cert.pem, and extra-roots.pem, roots trusted besides. It
// never overwrites an existing file: a corrupt, mismatched or lone file is an error the
// operator must resolve.
func LoadOrCreateCA(dir string, opts CAOptions) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	var files CAFiles
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{
		{caCertFile, &files.CACert}, {caKeyFile, &files.CAKey}, {certChainFile, &files.CertChain}, {extraRootsFile, &files.ExtraRoots},
	} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("load ca: %w", err)
		}
		*f.dst = b
	}
	certPath, keyPath := filepath.Join(dir, rootCertFile), filepath.Join(dir, rootKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	if files.CACert != nil || files.CAKey != nil {
		// The user's CA signs; ambit's root, while it is still there, is only trusted.
		if certErr != nil && !errors.Is(certErr, fs.ErrNotExist) {
			return nil, fmt.Errorf("load ca: %w", certErr)
		}
		files.RootCert = certPEM
		ca, err := loadCAFiles(opts, files)
		if err != nil {
			return nil, fmt.Errorf("load ca from %s: %w", dir, err)
		}
		ca.logLoaded("loaded signing ca", "dir", dir)
		return ca, nil
	}
	switch {
	case certErr == nil && keyErr == nil:
		files.RootCert, files.RootKey = certPEM, keyPEM
		ca, err := loadCAFiles(opts, files)
		if err != nil {
			return nil, fmt.Errorf("load ca from %s: %w", dir, err)
		}
		ca.logLoaded("loaded root ca", "dir", dir)
		return ca, nil
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("load ca: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, fmt.Errorf("load ca: %w", keyErr)
	case certErr == nil:
		return nil, fmt.Errorf("load ca: %s exists but %s does not; restore it or remove both to create a new root", certPath, keyPath)
	case keyErr == nil:
		return nil, fmt.Errorf("load ca: %s exists but %s does not; restore it or remove both to create a new root", keyPath, certPath)
	}

	ca, err := NewCA(opts)
	if err != nil {
		return nil, err
	}
	if files.ExtraRoots != nil {
		extra, err := parseExtraRoots(opts, files.ExtraRoots)
		if err != nil {
			return nil, fmt.Errorf("create ca in %s: %w", dir, err)
		}
		ca = newCA(opts, ca.signer, ca.key, nil, ca.signer, extra)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("create ca: marshal key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	// Key first: a crash in between leaves a lone key, which is reported
	// rather than silently replaced on the next start.
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	// The root alone: ca.rootPEM also holds the extra roots.
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.signer.Raw}), 0o644); err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	ca.logLoaded("created root ca", "dir", dir)
	return ca, nil
}

// writeNew writes data to a temporary file and links it into place, so the
// file appears complete or not at all, and an existing file (a concurrent
// creator) makes it fail instead of being overwritten.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}

// loadRoot parses and checks ambit's root and its key (root-cert.pem, root-key.pem).
func loadRoot(opts CAOptions, certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, rest := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, nil, fmt.Errorf("%s: want exactly one PEM CERTIFICATE block", rootCertFile)
	}
	root, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}
	ecKey, err := parseKey(keyPEM, rootKeyFile)
	if err != nil {
		return nil, nil, err
	}
	if !ecKey.PublicKey.Equal(root.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not match the key in %s", rootKeyFile, rootCertFile)
	}
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", rootCertFile)
	}
	if len(root.URIs) == 1 {
		td, err := spiffeid.TrustDomainFromURI(root.URIs[0])
		if err == nil && td != opts.TrustDomain {
			return nil, nil, fmt.Errorf("%s: root is for trust domain %q, configured %q", rootCertFile, td.Name(), opts.TrustDomain.Name())
		}
	}
	if now := opts.Clock.Now(); !now.Before(root.NotAfter) {
		return nil, nil, fmt.Errorf("%s: root expired at %s; remove both files to create a new root", rootCertFile, root.NotAfter.Format(time.RFC3339))
	}
	return root, ecKey, nil
}

// newCA returns the CA that signs with signer (whose key is key), sends intermediates (signer
// first, up to and not including root; nil when signer is root) with every leaf, and trusts
// root and extra.
func newCA(opts CAOptions, signer *x509.Certificate, key *ecdsa.PrivateKey, intermediates []*x509.Certificate, root *x509.Certificate, extra []*x509.Certificate) *CA {
	ca := &CA{opts: opts, signer: signer, key: key, notAfter: root.NotAfter}
	for _, c := range intermediates {
		ca.chain = append(ca.chain, c.Raw)
		if c.NotAfter.Before(ca.notAfter) {
			ca.notAfter = c.NotAfter
		}
	}
	for _, r := range append([]*x509.Certificate{root}, extra...) {
		if slices.ContainsFunc(ca.roots, func(c *x509.Certificate) bool { return c.Equal(r) }) {
			continue
		}
		ca.roots = append(ca.roots, r)
		ca.rootPEM = append(ca.rootPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return ca
}

// logLoaded logs what the CA signs with and trusts.
func (c *CA) logLoaded(msg string, kv ...any) {
	roots := make([]string, len(c.roots))
	for i, r := range c.roots {
		roots[i] = Fingerprint(r)
	}
	c.opts.Logger.Info(msg, append(kv, "trust_domain", c.opts.TrustDomain.Name(), "signer", c.signer.Subject.String(),
		"signer_not_after", c.notAfter, "roots", roots)...)
}

func newRoot(td spiffeid.TrustDomain, now time.Time) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("new root: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("new root: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"ambit"}, CommonName: "ambit root ca " + td.Name()},
		// The trust domain's own ID names the signing authority, as SPIRE does.
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("new root: %w", err)
	}
	return key, der, nil
}

// randomSerial returns a random, non-zero 128-bit serial number.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		if s := new(big.Int).SetBytes(b[:]); s.Sign() > 0 {
			return s, nil
		}
	}
}

// TrustDomain returns the trust domain the CA issues for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.opts.TrustDomain }

// Bundle returns a new trust bundle holding every root the CA trusts. It is a copy: changing
// it does not change what the CA trusts.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.opts.TrustDomain, c.roots)
}

// RootPEM returns the trust bundle in PEM form: the signing CA's root first, then the extra
// roots. Outside a rotation it is the one root.
func (c *CA) RootPEM() []byte { return bytes.Clone(c.rootPEM) }

// SignerRoot returns the root the CA's certificates chain to now.
func (c *CA) SignerRoot() *x509.Certificate { return c.roots[0] }

// Sign validates csrDER and issues a certificate for want. Deciding that the
// caller may have want is the caller's job; Sign only enforces that the CSR
// asks for exactly that ID, inside the CA's trust domain. ttl 0 means
// DefaultTTL; a ttl above MaxTTL is an error rather than silently clamped, so
// a misconfigured client notices. The result is the leaf, then the intermediates
// of the signing CA if it is not a root; never the root, which comes from Bundle.
func (c *CA) Sign(csrDER []byte, want spiffeid.ID, ttl time.Duration) ([][]byte, error) {
	if want.IsZero() {
		return nil, errors.New("sign: empty authorized identity")
	}
	if !want.MemberOf(c.opts.TrustDomain) {
		return nil, fmt.Errorf("sign %s: %w %q", want, ErrForeignTrustDomain, c.opts.TrustDomain.Name())
	}
	switch {
	case ttl < 0:
		return nil, fmt.Errorf("sign %s: %w: %s is negative", want, ErrInvalidTTL, ttl)
	case ttl > c.opts.MaxTTL:
		return nil, fmt.Errorf("sign %s: %w: %s exceeds the maximum %s", want, ErrInvalidTTL, ttl, c.opts.MaxTTL)
	case ttl == 0:
		ttl = c.opts.DefaultTTL
	}
	csr, id, err := ParseCSR(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", want, err)
	}
	if id != want {
		return nil, fmt.Errorf("sign %s: %w: csr asks for %s", want, ErrIdentityMismatch, id)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", want, err)
	}
	now := c.opts.Clock.Now()
	notAfter := now.Add(ttl)
	// A leaf outliving its signing chain would fail verification early anyway;
	// make its real lifetime visible so the manager renews in time.
	if notAfter.After(c.notAfter) {
		notAfter = c.notAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		// AuthorityKeyId is filled from the signer's SubjectKeyId by crypto/x509.
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.signer, csr.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", want, err)
	}
	c.opts.Logger.Info("issued certificate", "id", id.String(), "serial", serial.Text(16), "not_after", notAfter)
	return append([][]byte{der}, c.chain...), nil
}

// CreateCertificate implements Signer: the authorized identity is id.
func (c *CA) CreateCertificate(_ context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) ([][]byte, error) {
	return c.Sign(csrDER, id, ttl)
}
