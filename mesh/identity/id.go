package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when none is configured; it
// matches Kubernetes' default cluster domain, as Istio does.
const DefaultTrustDomain = "cluster.local"

// Workload is a workload identity broken into the parts policy matches on.
type Workload struct {
	TrustDomain    spiffeid.TrustDomain
	Namespace      string
	ServiceAccount string
}

// ID returns the SPIFFE ID of w. It returns the zero ID if w is not valid; use
// WorkloadID when the parts come from an untrusted source and an error is needed.
func (w Workload) ID() spiffeid.ID {
	id, err := WorkloadID(w.TrustDomain, w.Namespace, w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// String returns the SPIFFE ID of w as a string.
func (w Workload) String() string { return w.ID().String() }

// WorkloadID returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>. The
// namespace must be a DNS-1123 label and the service account a DNS-1123
// subdomain, the same rules Kubernetes applies to those names, so every ID we
// mint names an object that can exist.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("workload id: trust domain is empty")
	}
	if err := validateLabel(namespace); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: namespace %q: %w", namespace, err)
	}
	if err := validateSubdomain(serviceAccount); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: service account %q: %w", serviceAccount, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: %w", err)
	}
	return id, nil
}

// ParseWorkloadID parses a SPIFFE ID string that must have the workload shape
// /ns/<namespace>/sa/<serviceaccount>.
func ParseWorkloadID(s string) (Workload, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Workload{}, fmt.Errorf("parse workload id %q: %w", s, err)
	}
	w, err := WorkloadFromID(id)
	if err != nil {
		return Workload{}, fmt.Errorf("parse workload id %q: %w", s, err)
	}
	return w, nil
}

// WorkloadFromID splits an already parsed SPIFFE ID (for example the one
// VerifyPeer returns) into its workload parts.
func WorkloadFromID(id spiffeid.ID) (Workload, error) {
	if id.IsZero() {
		return Workload{}, errors.New("empty spiffe id")
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" {
		return Workload{}, fmt.Errorf("path %q is not /ns/<namespace>/sa/<serviceaccount>", id.Path())
	}
	if err := validateLabel(seg[1]); err != nil {
		return Workload{}, fmt.Errorf("namespace %q: %w", seg[1], err)
	}
	if err := validateSubdomain(seg[3]); err != nil {
		return Workload{}, fmt.Errorf("service account %q: %w", seg[3], err)
	}
	return Workload{TrustDomain: id.TrustDomain(), Namespace: seg[1], ServiceAccount: seg[3]}, nil
}

// validateLabel applies Kubernetes' IsDNS1123Label rule.
func validateLabel(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 63:
		return fmt.Errorf("must be at most 63 characters, got %d", len(s))
	}
	return labelChars(s)
}

// validateSubdomain applies Kubernetes' IsDNS1123Subdomain rule: dot-separated
// labels, 253 characters in total (Kubernetes does not cap each label at 63).
func validateSubdomain(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 253:
		return fmt.Errorf("must be at most 253 characters, got %d", len(s))
	}
	for l := range strings.SplitSeq(s, ".") {
		if l == "" {
			return errors.New("must not have an empty dot-separated part")
		}
		if err := labelChars(l); err != nil {
			return err
		}
	}
	return nil
}

func labelChars(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("invalid character %q: only lowercase letters, digits and '-' are allowed", c)
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

// WorkloadConfig is what a workload's identity is made of in config; config/v1's Workload
// has these getters.
type WorkloadConfig interface {
	GetTrustDomain() string
	GetNamespace() string
	GetServiceAccount() string
}

// WorkloadIdentity is the SPIFFE ID of w: spiffe://<td>/ns/<namespace>/sa/<service account>,
// with w's own trust domain, or fallback when it names none. ztunnel, the waypoint and the
// controller's CA all derive a workload's identity here.
func WorkloadIdentity(w WorkloadConfig, fallback spiffeid.TrustDomain) (spiffeid.ID, error) {
	td := fallback
	if w.GetTrustDomain() != "" {
		t, err := spiffeid.TrustDomainFromString(w.GetTrustDomain())
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("workload id: namespace %s: trust domain: %w", w.GetNamespace(), err)
		}
		td = t
	}
	return WorkloadID(td, w.GetNamespace(), w.GetServiceAccount())
}
