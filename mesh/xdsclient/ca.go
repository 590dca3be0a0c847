package xdsclient

import (
	"context"
	"encoding/pem"
	"fmt"
	"sync"
	"time"

	"ambit.dev/mesh/identity"
	cav1 "ambit.dev/proto/ca/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
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
