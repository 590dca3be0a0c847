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

	rootCertFile = "root-cert.pem"
	rootKeyFile  = "root-key.pem"
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

// CA issues X.509-SVIDs signed directly by a self-signed ECDSA P-256 root.
// It is safe for concurrent use.
type CA struct {
	opts    CAOptions
	root    *x509.Certificate
	key     *ecdsa.PrivateKey
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
	return newCA(opts, root, key), nil
}

// LoadOrCreateCA loads root-cert.pem and root-key.pem from dir, or creates them
// (key mode 0600) if neither exists, so a controller restart keeps its root and
// every issued certificate stays valid. It never overwrites an existing file: a
// corrupt, mismatched or lone file is an error the operator must resolve.
func LoadOrCreateCA(dir string, opts CAOptions) (*CA, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(dir, rootCertFile), filepath.Join(dir, rootKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		ca, err := loadCA(opts, certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("load ca from %s: %w", dir, err)
		}
		opts.Logger.Info("loaded root ca", "dir", dir, "trust_domain", opts.TrustDomain.Name(), "not_after", ca.root.NotAfter)
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
	if err := writeNew(certPath, ca.rootPEM, 0o644); err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	opts.Logger.Info("created root ca", "dir", dir, "trust_domain", opts.TrustDomain.Name(), "not_after", ca.root.NotAfter)
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

func loadCA(opts CAOptions, certPEM, keyPEM []byte) (*CA, error) {
	cb, rest := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%s: want exactly one PEM CERTIFICATE block", rootCertFile)
	}
	root, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("%s: no PEM block", rootKeyFile)
	}
	var key any
	switch kb.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	default:
		return nil, fmt.Errorf("%s: unexpected PEM block %q", rootKeyFile, kb.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootKeyFile, err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: key must be ECDSA P-256, got %T", rootKeyFile, key)
	}
	if err := checkP256(&ecKey.PublicKey); err != nil {
		return nil, fmt.Errorf("%s: %w", rootKeyFile, err)
	}
	if !ecKey.PublicKey.Equal(root.PublicKey) {
		return nil, fmt.Errorf("%s does not match the key in %s", rootKeyFile, rootCertFile)
	}
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s: not a CA certificate", rootCertFile)
	}
	if len(root.URIs) == 1 {
		td, err := spiffeid.TrustDomainFromURI(root.URIs[0])
		if err == nil && td != opts.TrustDomain {
			return nil, fmt.Errorf("%s: root is for trust domain %q, configured %q", rootCertFile, td.Name(), opts.TrustDomain.Name())
		}
	}
	if now := opts.Clock.Now(); !now.Before(root.NotAfter) {
		return nil, fmt.Errorf("%s: root expired at %s; remove both files to create a new root", rootCertFile, root.NotAfter.Format(time.RFC3339))
	}
	return newCA(opts, root, ecKey), nil
}

func newCA(opts CAOptions, root *x509.Certificate, key *ecdsa.PrivateKey) *CA {
	return &CA{
		opts:    opts,
		root:    root,
		key:     key,
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
	}
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

// Bundle returns a new trust bundle holding the root. It is a copy: changing it
// does not change what the CA trusts.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.opts.TrustDomain, []*x509.Certificate{c.root})
}

// RootPEM returns the root certificate in PEM form.
func (c *CA) RootPEM() []byte { return bytes.Clone(c.rootPEM) }

// Sign validates csrDER and issues a certificate for want. Deciding that the
// caller may have want is the caller's job; Sign only enforces that the CSR
// asks for exactly that ID, inside the CA's trust domain. ttl 0 means
// DefaultTTL; a ttl above MaxTTL is an error rather than silently clamped, so
// a misconfigured client notices. The result is [leaf] (leaf first, no root;
// the root comes from Bundle).
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
	// A leaf outliving its root would fail verification early anyway; make
	// its real lifetime visible so the manager renews in time.
	if notAfter.After(c.root.NotAfter) {
		notAfter = c.root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		// AuthorityKeyId is filled from the root's SubjectKeyId by crypto/x509.
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.root, csr.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", want, err)
	}
	c.opts.Logger.Info("issued certificate", "id", id.String(), "serial", serial.Text(16), "not_after", notAfter)
	return [][]byte{der}, nil
}

// CreateCertificate implements Signer: the authorized identity is id.
func (c *CA) CreateCertificate(_ context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) ([][]byte, error) {
	return c.Sign(csrDER, id, ttl)
}
