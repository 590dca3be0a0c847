package caserver

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"ambit.dev/mesh/identity"
	cav1 "ambit.dev/proto/ca/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeIdentities decides which identities a node's proxies may hold: those of the pods
// scheduled on it (and of the waypoints running there).
type NodeIdentities interface {
	Allowed(node string, id spiffeid.ID) bool
}

// NodeIdentitiesFunc adapts a function to NodeIdentities.
type NodeIdentitiesFunc func(node string, id spiffeid.ID) bool

// Allowed calls f.
func (f NodeIdentitiesFunc) Allowed(node string, id spiffeid.ID) bool { return f(node, id) }

// Errors the server classifies refusals with before mapping them to codes.
var (
	// ErrNotAllowed: the identity belongs to no pod on the caller's node, or is not the
	// restricted caller's own.
	ErrNotAllowed = errors.New("identity is not allowed for the caller")
	// ErrExtraSANs: the CSR asks for more than one SPIFFE ID.
	ErrExtraSANs = errors.New("csr carries SANs besides one spiffe id")
)

// Options configures a Server.
type Options struct {
	// CA signs the certificates. Required.
	CA *identity.CA
	// Authenticator maps the caller's token to a Caller. Required.
	Authenticator Authenticator
	// Identities authorizes node → identity. Required.
	Identities NodeIdentities
	// Logger; default discards.
	Logger *slog.Logger
}

// Server implements cav1.CertificateServiceServer.
type Server struct {
	cav1.UnimplementedCertificateServiceServer
	opts Options
}

// New validates opts and returns a Server.
func New(opts Options) (*Server, error) {
	switch {
	case opts.CA == nil:
		return nil, errors.New("ca server: no ca")
	case opts.Authenticator == nil:
		return nil, errors.New("ca server: no authenticator")
	case opts.Identities == nil:
		return nil, errors.New("ca server: no node identities")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts}, nil
}

// Register adds the CertificateService to gs.
func (s *Server) Register(gs *grpc.Server) { cav1.RegisterCertificateServiceServer(gs, s) }

// CreateCertificate authenticates, authorizes and signs.
func (s *Server) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	caller, err := Authenticate(ctx, s.opts.Authenticator)
	if err != nil {
		s.opts.Logger.Warn("certificate refused", "reason", "authentication", "error", err)
		return nil, toStatus(err)
	}
	chain, id, err := s.sign(caller, req)
	if err != nil {
		s.opts.Logger.Warn("certificate refused", "caller", caller.String(), "identity", req.GetIdentity(), "error", err)
		return nil, toStatus(err)
	}
	resp := &cav1.CreateCertificateResponse{RootBundle: string(s.opts.CA.RootPEM())}
	for _, der := range chain {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	}
	s.opts.Logger.Info("certificate issued", "caller", caller.String(), "identity", id.String())
	return resp, nil
}

// GetTrustBundle authenticates the caller and returns the trust bundle: the roots
// CreateCertificate sends too.
func (s *Server) GetTrustBundle(ctx context.Context, _ *cav1.GetTrustBundleRequest) (*cav1.GetTrustBundleResponse, error) {
	if _, err := Authenticate(ctx, s.opts.Authenticator); err != nil {
		s.opts.Logger.Warn("trust bundle refused", "reason", "authentication", "error", err)
		return nil, toStatus(err)
	}
	return &cav1.GetTrustBundleResponse{RootBundle: string(s.opts.CA.RootPEM())}, nil
}

func (s *Server) sign(caller Caller, req *cav1.CreateCertificateRequest) ([][]byte, spiffeid.ID, error) {
	block, rest := pem.Decode([]byte(req.GetCsr()))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || strings.TrimSpace(string(rest)) != "" {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: want one PEM CERTIFICATE REQUEST block", identity.ErrInvalidCSR)
	}
	// SANs beyond one SPIFFE ID are an attempt at someone else's authority, not a syntax
	// error: refuse them as such before ParseCSR lumps them in with malformed input.
	if csr, err := x509.ParseCertificateRequest(block.Bytes); err == nil {
		if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 || len(csr.URIs) > 1 {
			return nil, spiffeid.ID{}, fmt.Errorf("%w: dns %q, ip %v, email %q, uris %d",
				ErrExtraSANs, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses, len(csr.URIs))
		}
	}
	_, csrID, err := identity.ParseCSR(block.Bytes)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	id := csrID
	if req.GetIdentity() != "" {
		id, err = spiffeid.FromString(req.GetIdentity())
		if err != nil {
			return nil, spiffeid.ID{}, fmt.Errorf("%w: identity %q: %w", errInvalidArgument, req.GetIdentity(), err)
		}
		if id != csrID {
			return nil, spiffeid.ID{}, fmt.Errorf("%w: request names %s, csr %s", identity.ErrIdentityMismatch, id, csrID)
		}
	}
	if req.GetValiditySeconds() < 0 {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: validity_seconds %d is negative", identity.ErrInvalidTTL, req.GetValiditySeconds())
	}
	if !s.allowed(caller, id) {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %s for %s", ErrNotAllowed, id, caller)
	}
	chain, err := s.opts.CA.Sign(block.Bytes, id, time.Duration(req.GetValiditySeconds())*time.Second)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	return chain, id, nil
}

// allowed reports whether caller may hold id: a restricted caller (a waypoint with its own
// token) its own ServiceAccount's identity only, a node proxy those Identities allows.
func (s *Server) allowed(caller Caller, id spiffeid.ID) bool {
	if caller.Restricted() {
		w, err := identity.WorkloadFromID(id)
		return err == nil && id.TrustDomain() == s.opts.CA.TrustDomain() &&
			w.Namespace == caller.Namespace && w.ServiceAccount == caller.ServiceAccount
	}
	return s.opts.Identities.Allowed(caller.Node, id)
}

var errInvalidArgument = errors.New("invalid argument")

// toStatus is the one place errors become gRPC codes.
func toStatus(err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, ErrNotAllowed), errors.Is(err, ErrExtraSANs),
		errors.Is(err, identity.ErrIdentityMismatch), errors.Is(err, identity.ErrForeignTrustDomain):
		code = codes.PermissionDenied
	case errors.Is(err, identity.ErrInvalidCSR), errors.Is(err, identity.ErrInvalidTTL), errors.Is(err, errInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}
