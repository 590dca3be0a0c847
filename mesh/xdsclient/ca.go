package xdsclient

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"ambit.dev/mesh/identity"
	cav1 "ambit.dev/proto/ca/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// CAClient asks the controller's CertificateService for certificates. It implements
// identity.Signer, so an identity.Manager can use it directly.
type CAClient struct {
	client cav1.CertificateServiceClient
	trust  *identity.TrustBundle // updated from every response; nil: not

	mu     sync.Mutex
	bundle []byte
}

var _ identity.Signer = (*CAClient)(nil)

// NewCAClient returns a CAClient over conn (from Dial, which adds the bearer token).
func NewCAClient(conn grpc.ClientConnInterface) *CAClient {
	return &CAClient{client: cav1.NewCertificateServiceClient(conn)}
}

// NewCAClientWithBundle returns a CAClient that replaces trust's roots with the bundle of
// every response (identity.TrustBundle.Update checks it). A response whose bundle is refused
// fails as a whole: its certificate is not used either, and the manager retries.
func NewCAClientWithBundle(conn grpc.ClientConnInterface, trust *identity.TrustBundle) *CAClient {
	return &CAClient{client: cav1.NewCertificateServiceClient(conn), trust: trust}
}

// CreateCertificate sends the CSR (as PEM) for id and returns the chain as DER, leaf first.
func (c *CAClient) CreateCertificate(ctx context.Context, id spiffeid.ID, csrDER []byte, ttl time.Duration) ([][]byte, error) {
	resp, err := c.client.CreateCertificate(ctx, &cav1.CreateCertificateRequest{
		Csr:             string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		ValiditySeconds: int64(ttl / time.Second),
		Identity:        id.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("create certificate for %s: %w", id, err)
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, fmt.Errorf("create certificate for %s: empty chain", id)
	}
	chain := make([][]byte, 0, len(resp.GetCertChain()))
	for i, p := range resp.GetCertChain() {
		b, rest := pem.Decode([]byte(p))
		if b == nil || b.Type != "CERTIFICATE" || len(rest) != 0 && len(pemTrim(rest)) != 0 {
			return nil, fmt.Errorf("create certificate for %s: chain element %d is not one PEM CERTIFICATE", id, i)
		}
		chain = append(chain, b.Bytes)
	}
	if rb := resp.GetRootBundle(); rb != "" {
		if c.trust != nil {
			if _, err := c.trust.Update([]byte(rb), chain); err != nil {
				return nil, fmt.Errorf("create certificate for %s: %w", id, err)
			}
		}
		c.mu.Lock()
		c.bundle = []byte(rb)
		c.mu.Unlock()
	}
	return chain, nil
}

// FetchBundle asks the controller for its trust bundle alone and updates the TrustBundle with
// it. Without a certificate to check the bundle against, it checks it against the
// controller's own chain, which this connection verified: the bundle must cover it. A proxy
// holding no certificate calls it when its connection to the controller is new, so that it
// follows a root rotation too. A controller that does not know the call (Unimplemented) is no
// error.
func (c *CAClient) FetchBundle(ctx context.Context) error {
	if c.trust == nil {
		return errors.New("fetch trust bundle: no trust bundle to update")
	}
	var p peer.Peer
	resp, err := c.client.GetTrustBundle(ctx, &cav1.GetTrustBundleRequest{}, grpc.Peer(&p))
	if status.Code(err) == codes.Unimplemented {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fetch trust bundle: %w", err)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return errors.New("fetch trust bundle: the controller's connection carries no verified certificate")
	}
	chain := make([][]byte, len(info.State.PeerCertificates))
	for i, c := range info.State.PeerCertificates {
		chain[i] = c.Raw
	}
	if _, err := c.trust.Update([]byte(resp.GetRootBundle()), chain); err != nil {
		return fmt.Errorf("fetch trust bundle: %w", err)
	}
	return nil
}

// RunBundleRefresh calls FetchBundle whenever kick fires (a proxy kicks it when its config
// stream connects), retrying a failed call after 1 s, doubling up to 30 s, until it succeeds
// or kick fires again. It returns nil when ctx ends.
func (c *CAClient) RunBundleRefresh(ctx context.Context, kick <-chan struct{}, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
		for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
			fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := c.FetchBundle(fctx)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			log.Warn("trust bundle fetch failed", "retry_in", wait, "error", err)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-kick:
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// RootBundle returns the PEM trust bundle of the last successful response, or nil.
func (c *CAClient) RootBundle() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle
}

func pemTrim(b []byte) []byte {
	for len(b) > 0 && (b[0] == '\n' || b[0] == '\r' || b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}
