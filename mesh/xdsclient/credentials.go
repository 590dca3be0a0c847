package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"ambit.dev/mesh/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

// TokenSource returns the bearer token for the next call. It is asked on every call (and
// every stream), so a rotating token (a projected ServiceAccount token) is picked up.
type TokenSource func(ctx context.Context) (string, error)

// StaticToken returns a TokenSource that always returns token.
func StaticToken(token string) TokenSource {
	return func(context.Context) (string, error) { return token, nil }
}

// TokenFile returns a TokenSource that reads path on every call; surrounding whitespace is
// trimmed.
func TokenFile(path string) TokenSource {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read token: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("read token: %s is empty", path)
		}
		return t, nil
	}
}

type bearer struct{ src TokenSource }

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	t, err := b.src(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + t}, nil
}

// RequireTransportSecurity keeps the token off plaintext connections.
func (bearer) RequireTransportSecurity() bool { return true }

// ClientTLS returns the TLS configuration for connections to the controller: TLS 1.3, the
// chain verified against bundle (the mesh root), and the server's SPIFFE ID must be want.
// When bundle is an *identity.TrustBundle loaded from a file and the chain is not trusted, the
// file is read again (TrustBundle.RecoverFromFile): a proxy that missed a step of a root
// rotation finds the controller again without a restart.
func ClientTLS(bundle x509bundle.Source, want spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		// SPIFFE IDs are not host names: the chain and the URI SAN are checked below on every
		// handshake instead.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := identity.VerifyPeer(raw, bundle)
			if tb, ok := bundle.(*identity.TrustBundle); ok && errors.Is(err, identity.ErrUntrustedChain) {
				var rerr error
				if id, rerr = tb.RecoverFromFile(raw); rerr == nil {
					err = nil
				} else {
					err = fmt.Errorf("%w (%w)", err, rerr)
				}
			}
			if err != nil {
				return fmt.Errorf("verify controller: %w", err)
			}
			if id != want {
				return fmt.Errorf("verify controller: server is %s, want %s", id, want)
			}
			return nil
		},
	}
}

// DialOptions configures Dial.
type DialOptions struct {
	// Address of the controller's gRPC listener, host:port. Required.
	Address string
	// Token is sent on every call. Required.
	Token TokenSource
	// Bundle holds the mesh root the controller's certificate chains to. Required.
	Bundle x509bundle.Source
	// ServerID is the identity the controller must prove. Default: ControllerID in
	// identity.DefaultTrustDomain; set it when the mesh uses another trust domain.
	ServerID spiffeid.ID
	// Extra gRPC dial options, appended last.
	Extra []grpc.DialOption
}

// Dial returns a lazily connecting gRPC client connection to the controller, shared by Client
// and CAClient. The caller closes it.
func Dial(o DialOptions) (*grpc.ClientConn, error) {
	switch {
	case o.Address == "":
		return nil, errors.New("dial controller: address is empty")
	case o.Token == nil:
		return nil, errors.New("dial controller: no token source")
	case o.Bundle == nil:
		return nil, errors.New("dial controller: no trust bundle")
	}
	if o.ServerID.IsZero() {
		o.ServerID = ControllerID(spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain))
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(ClientTLS(o.Bundle, o.ServerID))),
		grpc.WithPerRPCCredentials(bearer{o.Token}),
		// A full config of a large mesh is one response per type; the default 4 MiB is too
		// small for tens of thousands of workloads.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize)),
		// gRPC's own reconnect backoff grows to 2 minutes by default; a proxy should find a
		// controller that is back as soon as the stream's backoff allows.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: DefaultMaxBackoff,
		}, MinConnectTimeout: 5 * time.Second}),
	}
	opts = append(opts, o.Extra...)
	cc, err := grpc.NewClient(o.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial controller %s: %w", o.Address, err)
	}
	return cc, nil
}

// DialController is how a proxy reaches its controller: trust starts at the roots in
// rootCert (the proxy's --root-cert) for trust domain td, and the connection to address,
// authenticated with the token in tokenFile, verifies the controller against them. From then
// on the controller's CA sends the bundle with every certificate, and the returned
// TrustBundle follows it (a root rotation needs no restart); a proxy that missed a step
// re-reads rootCert (ClientTLS). The caller closes the connection.
func DialController(td spiffeid.TrustDomain, rootCert, address, tokenFile string, log *slog.Logger) (*grpc.ClientConn, *identity.TrustBundle, error) {
	bundle, err := identity.LoadTrustBundle(td, rootCert, log.With("component", "trust"))
	if err != nil {
		return nil, nil, err
	}
	cc, err := Dial(DialOptions{Address: address, Token: TokenFile(tokenFile), Bundle: bundle, ServerID: ControllerID(td)})
	if err != nil {
		return nil, nil, err
	}
	return cc, bundle, nil
}

// MaxMessageSize is the largest xDS message either side accepts.
const MaxMessageSize = 256 << 20
