package caserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"ambit.dev/mesh/identity"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// Keys of the CA Secret: the same names as the files of a CA dir (identity.LoadOrCreateCA), so
// a root moves between the two with `kubectl create secret generic --from-file`. Besides
// ambit's root the Secret may hold a signing CA of the user's and extra trusted roots, as
// identity.CAFiles describes: how the root rotates (docs/operations.md).
const (
	SecretCertKey       = "root-cert.pem"
	SecretKeyKey        = "root-key.pem"
	SecretCACertKey     = "ca-cert.pem"
	SecretCAKeyKey      = "ca-key.pem"
	SecretCertChainKey  = "cert-chain.pem"
	SecretExtraRootsKey = "extra-roots.pem"
)

// DefaultCASecretName is the Secret that holds the root in Kubernetes mode, in the
// controller's namespace.
const DefaultCASecretName = "ambit-ca"

// ParseSecretRef parses "NAMESPACE/NAME", or "NAME" in defaultNamespace.
func ParseSecretRef(ref, defaultNamespace string) (namespace, name string, err error) {
	namespace, name = defaultNamespace, ref
	if ns, n, ok := strings.Cut(ref, "/"); ok {
		namespace, name = ns, n
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return "", "", fmt.Errorf("secret %q: namespace %q: %s", ref, namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", "", fmt.Errorf("secret %q: name %q: %s", ref, name, strings.Join(errs, "; "))
	}
	return namespace, name, nil
}

// SecretCA keeps the CA root in a Kubernetes Secret, so that it survives restarts and every
// replica signs with the same root.
type SecretCA struct {
	// Client reads and creates the Secret. The controller's RBAC allows get on this one Secret
	// and create on Secrets of its namespace (RBAC cannot restrict create by name). Required.
	Client          kubernetes.Interface
	Namespace, Name string
	// CA configures the CA; its TrustDomain must match the stored root's.
	CA identity.CAOptions
	// Logger; default discards.
	Logger *slog.Logger
	// Retries of a transient API error (anything but NotFound, AlreadyExists, Forbidden,
	// Unauthorized) before Load gives up; default 5, one second apart, doubling.
	Retries int
}

// Load returns the CA of the root in the Secret. If the Secret does not exist it creates it,
// immutable, with a new root. Two replicas starting together may both try: the one whose create
// fails with AlreadyExists reads and uses the other's root, so both sign with one root and
// no leader is needed. An existing Secret is never changed: one that is unreadable (a key
// missing, a corrupt or mismatched pair, another trust domain) is an error the operator must
// resolve, never replaced by a new root that would invalidate every certificate.
func (s *SecretCA) Load(ctx context.Context) (*identity.CA, error) {
	if s.Client == nil || s.Name == "" || s.Namespace == "" {
		return nil, errors.New("ca secret: client, namespace and name are required")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	retries := s.Retries
	if retries == 0 {
		retries = 5
	}
	ref := s.Namespace + "/" + s.Name
	wait := time.Second
	for attempt := 0; ; attempt++ {
		ca, created, err := s.loadOrCreate(ctx)
		if err == nil {
			if created {
				log.Info("created root ca in secret", "secret", ref, "trust_domain", ca.TrustDomain().Name())
			} else {
				log.Info("loaded root ca from secret", "secret", ref, "trust_domain", ca.TrustDomain().Name())
			}
			return ca, nil
		}
		var perm *permanentError
		if errors.As(err, &perm) || attempt >= retries || ctx.Err() != nil {
			return nil, fmt.Errorf("ca secret %s: %w", ref, err)
		}
		log.Warn("ca secret not available yet, retrying", "secret", ref, "error", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("ca secret %s: %w", ref, err)
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// permanentError is an error that retrying does not fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsInvalid(err) {
		return &permanentError{err}
	}
	return err
}

func (s *SecretCA) loadOrCreate(ctx context.Context) (ca *identity.CA, created bool, err error) {
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	sec, err := secrets.Get(ctx, s.Name, metav1.GetOptions{})
	switch {
	case err == nil:
		ca, err := s.fromSecret(sec)
		return ca, false, err
	case !apierrors.IsNotFound(err):
		return nil, false, fmt.Errorf("get: %w", permanent(err))
	}

	certPEM, keyPEM, err := identity.NewRootPEM(s.CA)
	if err != nil {
		return nil, false, &permanentError{err}
	}
	immutable := true
	sec = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: map[string]string{
			"app.kubernetes.io/name": "ambit-controller", "app.kubernetes.io/part-of": "ambit", "app.kubernetes.io/component": "ca",
		}},
		Type:      corev1.SecretTypeOpaque,
		Immutable: &immutable,
		Data:      map[string][]byte{SecretCertKey: certPEM, SecretKeyKey: keyPEM},
	}
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, false, fmt.Errorf("create: %w", permanent(err))
		}
		// Another replica created it between our get and create: use its root.
		sec, err := secrets.Get(ctx, s.Name, metav1.GetOptions{})
		if err != nil {
			return nil, false, fmt.Errorf("get after a concurrent create: %w", permanent(err))
		}
		ca, err := s.fromSecret(sec)
		return ca, false, err
	}
	ca, err = identity.LoadCA(certPEM, keyPEM, s.CA)
	if err != nil {
		return nil, false, &permanentError{err}
	}
	return ca, true, nil
}

func (s *SecretCA) fromSecret(sec *corev1.Secret) (*identity.CA, error) {
	d := sec.Data
	files := identity.CAFiles{
		RootCert: d[SecretCertKey], RootKey: d[SecretKeyKey],
		CACert: d[SecretCACertKey], CAKey: d[SecretCAKeyKey], CertChain: d[SecretCertChainKey],
		ExtraRoots: d[SecretExtraRootsKey],
	}
	if files.CACert == nil && files.CAKey == nil && (len(files.RootCert) == 0 || len(files.RootKey) == 0) {
		return nil, &permanentError{fmt.Errorf("secret lacks %s or %s (and holds no %s); restore it, or delete the secret to create a new root (every issued certificate then stops verifying)", SecretCertKey, SecretKeyKey, SecretCACertKey)}
	}
	if files.CACert != nil {
		files.RootKey = nil // ambit's root, if still there, is only trusted
	}
	ca, err := identity.LoadCAFiles(files, s.CA)
	if err != nil {
		return nil, &permanentError{err}
	}
	return ca, nil
}
