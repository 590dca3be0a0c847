package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"ambit.dev/proto/dump"
)

// ErrBundleRefused is wrapped by TrustBundle.Update when a bundle the CA sent fails a check;
// the bundle held before stays in force.
var ErrBundleRefused = errors.New("trust bundle refused")

// TrustBundle is the set of roots a proxy verifies its peers against, for its own trust
// domain. It starts from the roots the proxy was started with (--root-cert) and is replaced
// whole by the bundle the controller's CA sends with every certificate (Update), so a second
// root becomes trusted, and the old one stops being trusted, without restarting the proxy.
//
// It is an x509bundle.Source: HBONE (HTTP/2 and HTTP/3, client and server side) and the
// connection to the controller look it up on every handshake, so an update applies to the
// next handshake. Connections already open stay up. Safe for concurrent use.
type TrustBundle struct {
	td     spiffeid.TrustDomain
	file   string // the --root-cert it was loaded from, for RecoverFromFile; may be empty
	log    *slog.Logger
	now    func() time.Time
	mu     sync.Mutex // serializes Update
	bundle atomic.Pointer[x509bundle.Bundle]
}

// NewTrustBundle returns a TrustBundle holding initial's roots, for initial's trust domain.
// log (nil discards) gets a line for every change.
func NewTrustBundle(initial *x509bundle.Bundle, log *slog.Logger) *TrustBundle {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &TrustBundle{td: initial.TrustDomain(), log: log, now: time.Now}
	t.bundle.Store(initial.Clone())
	return t
}

// LoadTrustBundle is NewTrustBundle over the roots in path (a proxy's --root-cert), and
// remembers path for RecoverFromFile.
func LoadTrustBundle(td spiffeid.TrustDomain, path string, log *slog.Logger) (*TrustBundle, error) {
	roots, err := LoadBundle(td, path)
	if err != nil {
		return nil, err
	}
	t := NewTrustBundle(roots, log)
	t.file = path
	return t, nil
}

// RecoverFromFile is the way back for a proxy that missed a step of a root rotation: away
// while the controller restarted twice, it holds roots the controller's certificate no longer
// chains to, and Update, which only runs over a verified connection, can never reach it. When
// the controller's chain does not verify against the bundle, this re-reads the file the bundle
// was loaded from (--root-cert: the lab's trust-bundle.pem, which the controller rewrites at
// each restart, or the ConfigMap `ambitctl install` publishes) and, if chain verifies against
// the file's roots, makes them the bundle, as restarting the proxy would. It returns the
// chain's SPIFFE ID. Call it for the controller's chain only: a peer's certificate is never a
// reason to change trust.
func (t *TrustBundle) RecoverFromFile(chain [][]byte) (spiffeid.ID, error) {
	if t.file == "" {
		return spiffeid.ID{}, errors.New("no --root-cert file to reload")
	}
	roots, err := LoadBundle(t.td, t.file)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, err := VerifyPeer(chain, roots)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("not against the roots of %s either: %w", t.file, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.bundle.Load()
	if !roots.Equal(cur) {
		t.bundle.Store(roots)
		t.log.Warn("trust bundle reset from the root certificate file: the controller's certificate chains to none of the roots held (a step of a root rotation was missed)",
			"trust_domain", t.td.Name(), "file", t.file, "roots", fingerprints(roots.X509Authorities()),
			"removed", fingerprints(slices.DeleteFunc(cur.X509Authorities(), roots.HasX509Authority)))
	}
	return id, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (t *TrustBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != t.td {
		return nil, fmt.Errorf("%w %q", ErrUnknownTrustDomain, td.Name())
	}
	return t.bundle.Load(), nil
}

// Roots returns the roots trusted now.
func (t *TrustBundle) Roots() []*x509.Certificate { return t.bundle.Load().X509Authorities() }

// Update replaces the roots with the PEM bundle the CA sent with the certificate chain
// issued (DER, leaf first). It is called only with what arrived over the connection to the
// controller, whose certificate was verified against this bundle; on top of that the new
// bundle must hold only CA certificates that are valid now and of this trust domain (when
// they name one), must keep at least one of the roots trusted now (a bundle that replaces
// every root at once is a reset, never a step of a rotation) and must verify the chain just
// issued. A bundle that fails a check is refused with ErrBundleRefused and changes nothing.
// It reports whether the roots changed.
func (t *TrustBundle) Update(bundlePEM []byte, issued [][]byte) (bool, error) {
	roots, err := parseCerts(bundlePEM, "bundle")
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrBundleRefused, err)
	}
	if len(roots) == 0 {
		return false, fmt.Errorf("%w: it holds no certificate", ErrBundleRefused)
	}
	now := t.now()
	for i, r := range roots {
		switch {
		case !r.BasicConstraintsValid || !r.IsCA:
			return false, fmt.Errorf("%w: certificate %d (%s) is not a CA", ErrBundleRefused, i+1, r.Subject)
		case now.Before(r.NotBefore) || now.After(r.NotAfter):
			return false, fmt.Errorf("%w: certificate %d (%s) is not valid now (%s to %s)", ErrBundleRefused, i+1, r.Subject,
				r.NotBefore.UTC().Format(time.RFC3339), r.NotAfter.UTC().Format(time.RFC3339))
		}
		if len(r.URIs) == 1 {
			if td, err := spiffeid.TrustDomainFromURI(r.URIs[0]); err == nil && td != t.td {
				return false, fmt.Errorf("%w: certificate %d is for trust domain %q, not %q", ErrBundleRefused, i+1, td.Name(), t.td.Name())
			}
		}
	}
	next := x509bundle.FromX509Authorities(t.td, roots)

	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.bundle.Load()
	if next.Equal(cur) {
		return false, nil
	}
	if !slices.ContainsFunc(roots, cur.HasX509Authority) {
		return false, fmt.Errorf("%w: it keeps none of the %d roots trusted now", ErrBundleRefused, len(cur.X509Authorities()))
	}
	if len(issued) > 0 {
		certs := make([]*x509.Certificate, len(issued))
		for i, der := range issued {
			if certs[i], err = x509.ParseCertificate(der); err != nil {
				return false, fmt.Errorf("%w: issued certificate %d: %w", ErrBundleRefused, i, err)
			}
		}
		if _, _, err := x509svid.Verify(certs, next, x509svid.WithTime(now)); err != nil {
			return false, fmt.Errorf("%w: the certificate issued with it does not verify against it: %w", ErrBundleRefused, err)
		}
	}
	t.bundle.Store(next)
	t.log.Info("trust bundle updated", "trust_domain", t.td.Name(), "roots", fingerprints(roots),
		"added", fingerprints(slices.DeleteFunc(slices.Clone(roots), cur.HasX509Authority)),
		"removed", fingerprints(slices.DeleteFunc(cur.X509Authorities(), next.HasX509Authority)))
	return true, nil
}

func fingerprints(cs []*x509.Certificate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = Fingerprint(c)
	}
	return out
}

// DumpRoots describes the roots src trusts for td, for a proxy's /config_dump.
func DumpRoots(src x509bundle.Source, td spiffeid.TrustDomain) []dump.Root {
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil
	}
	roots := b.X509Authorities()
	out := make([]dump.Root, len(roots))
	for i, r := range roots {
		out[i] = dump.Root{Subject: r.Subject.String(), Fingerprint: Fingerprint(r), NotAfter: r.NotAfter}
	}
	return out
}
