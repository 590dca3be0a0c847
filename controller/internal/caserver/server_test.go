package caserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/xdsclient"
	cav1 "ambit.dev/proto/ca/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td     = spiffeid.RequireTrustDomainFromString("cluster.local")
	idA    = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	idB    = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/db")
	nodeOf = map[spiffeid.ID]string{idA: "node-a", idB: "node-b"}
)

// caEnv is a controller serving the CertificateService over TLS on loopback, its certificate
// kept by an identity.Manager with the CA as signer.
type caEnv struct {
	ca     *identity.CA
	addr   string
	tokens string
}

func newCAEnv(t *testing.T) *caEnv {
	t.Helper()
	ca, err := identity.NewCA(identity.CAOptions{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := EnsureNodeTokens(dir, "node-a", "node-b"); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{
		CA:            ca,
		Authenticator: &TokenDir{Dir: dir},
		Identities:    NodeIdentitiesFunc(func(node string, id spiffeid.ID) bool { return nodeOf[id] == node }),
	})
	if err != nil {
		t.Fatal(err)
	}
	mgr := identity.NewManager(identity.ManagerOptions{Signer: ca})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(ServerTLS(mgr, xdsclient.ControllerID(td)))))
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = mgr.Run(ctx) })
	wg.Go(func() { _ = gs.Serve(lis) })
	t.Cleanup(func() { gs.Stop(); cancel(); wg.Wait() })
	return &caEnv{ca: ca, addr: lis.Addr().String(), tokens: dir}
}

func (e *caEnv) client(t *testing.T, token string, serverID spiffeid.ID) cav1.CertificateServiceClient {
	t.Helper()
	cc, err := xdsclient.Dial(xdsclient.DialOptions{Address: e.addr, Token: xdsclient.StaticToken(token), Bundle: e.ca.Bundle(), ServerID: serverID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cav1.NewCertificateServiceClient(cc)
}

func (e *caEnv) token(t *testing.T, node string) string {
	b, err := os.ReadFile(filepath.Join(e.tokens, node))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func csrPEM(t *testing.T, tmpl *x509.CertificateRequest) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestCreateCertificate(t *testing.T) {
	e := newCAEnv(t)
	tokA := e.token(t, "node-a")
	forID := func(id spiffeid.ID) *x509.CertificateRequest {
		return &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}
	}
	tests := []struct {
		name     string
		token    string
		csr      *x509.CertificateRequest
		rawCSR   string
		identity string
		validity int64
		want     codes.Code
	}{
		{name: "own node identity", token: tokA, csr: forID(idA), want: codes.OK},
		{name: "own node identity named explicitly", token: tokA, csr: forID(idA), identity: idA.String(), validity: 3600, want: codes.OK},
		{name: "other node's identity", token: tokA, csr: forID(idB), want: codes.PermissionDenied},
		{name: "identity differs from csr", token: tokA, csr: forID(idA), identity: idB.String(), want: codes.PermissionDenied},
		{name: "extra dns san", token: tokA, csr: &x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, DNSNames: []string{"db.shop.svc"}}, want: codes.PermissionDenied},
		{name: "two spiffe ids", token: tokA, csr: &x509.CertificateRequest{URIs: []*url.URL{idA.URL(), idB.URL()}}, want: codes.PermissionDenied},
		{name: "foreign trust domain", token: tokA, csr: forID(spiffeid.RequireFromString("spiffe://evil.org/ns/shop/sa/web")), want: codes.PermissionDenied},
		{name: "garbage csr", token: tokA, rawCSR: "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n", want: codes.InvalidArgument},
		{name: "not pem", token: tokA, rawCSR: "hello", want: codes.InvalidArgument},
		{name: "no uri san", token: tokA, csr: &x509.CertificateRequest{}, want: codes.InvalidArgument},
		{name: "negative ttl", token: tokA, csr: forID(idA), validity: -1, want: codes.InvalidArgument},
		{name: "ttl above maximum", token: tokA, csr: forID(idA), validity: int64((30 * 24 * time.Hour).Seconds()), want: codes.InvalidArgument},
		{name: "forged token", token: "forged", csr: forID(idA), want: codes.Unauthenticated},
		{name: "empty token", token: "", csr: forID(idA), want: codes.Unauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := e.client(t, tc.token, spiffeid.ID{})
			raw := tc.rawCSR
			if tc.csr != nil {
				raw = csrPEM(t, tc.csr)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := c.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: raw, Identity: tc.identity, ValiditySeconds: tc.validity})
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %v (%v), want %v", got, err, tc.want)
			}
			if tc.want != codes.OK {
				return
			}
			if len(resp.GetCertChain()) != 1 || string(e.ca.RootPEM()) != resp.GetRootBundle() {
				t.Fatalf("response = %v", resp)
			}
			b, _ := pem.Decode([]byte(resp.GetCertChain()[0]))
			got, err := identity.VerifyPeer([][]byte{b.Bytes}, e.ca.Bundle())
			if err != nil || got != idA {
				t.Errorf("issued certificate: %v, %v", got, err)
			}
		})
	}
}

// callerMap is an Authenticator with fixed token → Caller answers.
type callerMap map[string]Caller

func (m callerMap) Authenticate(_ context.Context, token string) (Caller, error) {
	if c, ok := m[token]; ok {
		return c, nil
	}
	return Caller{}, ErrUnauthenticated
}

// A waypoint authenticated with its own ServiceAccount token (a restricted Caller) gets the
// certificate of that ServiceAccount and no other, even one of a pod on its node; a node
// proxy on the same node still gets its pods' identities.
func TestRestrictedCaller(t *testing.T) {
	ca, err := identity.NewCA(identity.CAOptions{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	wpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/wp")
	srv, err := New(Options{
		CA: ca,
		Authenticator: callerMap{
			"waypoint": {Node: "node-a", Namespace: "shop", ServiceAccount: "wp"},
			"node":     {Node: "node-a"},
		},
		// Every identity "runs" on node-a: only the restriction can refuse.
		Identities: NodeIdentitiesFunc(func(node string, _ spiffeid.ID) bool { return node == "node-a" }),
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		token string
		id    spiffeid.ID
		want  codes.Code
	}{
		{"waypoint", wpID, codes.OK},
		{"waypoint", idA, codes.PermissionDenied}, // a pod on its node
		{"waypoint", spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/wp"), codes.PermissionDenied}, // same name elsewhere
		{"waypoint", spiffeid.RequireFromString("spiffe://evil.org/ns/shop/sa/wp"), codes.PermissionDenied},
		{"waypoint", spiffeid.RequireFromString("spiffe://cluster.local/wp"), codes.PermissionDenied}, // not a workload ID
		{"node", idA, codes.OK},
		{"node", wpID, codes.OK},
	}
	for _, tc := range tests {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tc.token))
		csr := csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{tc.id.URL()}})
		_, err := srv.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr})
		if got := status.Code(err); got != tc.want {
			t.Errorf("%s asking for %s: %v (%v), want %v", tc.token, tc.id, got, err, tc.want)
		}
	}
}

// TestManagerOverCAClient is how a ztunnel gets certificates: identity.Manager with the
// xds.CAClient as its signer, over TLS that proves the controller's identity.
func TestManagerOverCAClient(t *testing.T) {
	e := newCAEnv(t)
	tests := []struct {
		name     string
		serverID spiffeid.ID
		id       spiffeid.ID
		ok       bool
	}{
		{"own identity", spiffeid.ID{}, idA, true},
		{"other node's identity", spiffeid.ID{}, idB, false},
		{"server is not the expected controller", spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y"), idA, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := xdsclient.Dial(xdsclient.DialOptions{Address: e.addr, Token: xdsclient.StaticToken(e.token(t, "node-a")), Bundle: e.ca.Bundle(), ServerID: tc.serverID})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			cac := xdsclient.NewCAClient(cc)
			mgr := identity.NewManager(identity.ManagerOptions{Signer: cac, MinBackoff: time.Hour})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- mgr.Run(ctx) }()
			defer func() { cancel(); <-done }()
			cert, err := mgr.Certificate(ctx, tc.id)
			if (err == nil) != tc.ok {
				t.Fatalf("Certificate: %v", err)
			}
			if tc.ok {
				if got, err := identity.VerifyPeer(cert.Certificate, e.ca.Bundle()); err != nil || got != tc.id {
					t.Errorf("certificate for %v: %v", got, err)
				}
				if string(cac.RootBundle()) != string(e.ca.RootPEM()) {
					t.Error("CAClient did not keep the root bundle")
				}
			}
		})
	}
}

func TestTokenDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "node-c"), []byte("preset\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := EnsureNodeTokens(dir, "node-a", "node-b", "node-c"); err != nil {
		t.Fatal(err)
	}
	tokA, _ := os.ReadFile(filepath.Join(dir, "node-a"))
	if err := EnsureNodeTokens(dir, "node-a"); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(dir, "node-a"))
	if string(again) != string(tokA) {
		t.Error("EnsureNodeTokens replaced an existing token")
	}
	fi, err := os.Stat(filepath.Join(dir, "node-b"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("node-b: %v, mode %v", err, fi.Mode())
	}
	auth := &TokenDir{Dir: dir}
	tests := []struct {
		token string
		node  string
		ok    bool
	}{
		{strings.TrimSpace(string(tokA)), "node-a", true},
		{"preset", "node-c", true},
		{"prese", "", false},
		{"", "", false},
	}
	for _, tc := range tests {
		c, err := auth.Authenticate(context.Background(), tc.token)
		if (err == nil) != tc.ok || c != (Caller{Node: tc.node}) {
			t.Errorf("Authenticate(%q) = %+v, %v", tc.token, c, err)
		}
		if err != nil && !strings.Contains(err.Error(), ErrUnauthenticated.Error()) {
			t.Errorf("error %v does not wrap ErrUnauthenticated", err)
		}
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b"} {
		if err := EnsureNodeTokens(dir, bad); err == nil {
			t.Errorf("EnsureNodeTokens(%q) succeeded", bad)
		}
	}
}

func mustCSR(t *testing.T, id spiffeid.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := identity.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
