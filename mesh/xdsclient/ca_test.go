package xdsclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	cav1 "ambit.dev/proto/ca/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// fakeCA is a controller's CertificateService that signs with ca and answers with bundle,
// whatever it is, under a serving certificate of signer's.
type fakeCA struct {
	cav1.UnimplementedCertificateServiceServer
	ca     *identity.CA
	bundle []byte
}

func (f *fakeCA) CreateCertificate(_ context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	blk, _ := pem.Decode([]byte(req.GetCsr()))
	id, err := spiffeid.FromString(req.GetIdentity())
	if err != nil || blk == nil {
		return nil, errors.New("bad request")
	}
	chain, err := f.ca.Sign(blk.Bytes, id, 0)
	if err != nil {
		return nil, err
	}
	resp := &cav1.CreateCertificateResponse{RootBundle: string(f.bundle)}
	for _, der := range chain {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	}
	return resp, nil
}

func (f *fakeCA) GetTrustBundle(context.Context, *cav1.GetTrustBundleRequest) (*cav1.GetTrustBundleResponse, error) {
	return &cav1.GetTrustBundleResponse{RootBundle: string(f.bundle)}, nil
}

// oldController knows CreateCertificate only.
type oldController struct {
	cav1.UnimplementedCertificateServiceServer
}

func serveFakeCA(t *testing.T, f cav1.CertificateServiceServer, serving *identity.CA) string {
	t.Helper()
	cert := identitytest.Issue(t, serving, ControllerID(serving.TrustDomain()), time.Hour)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*cert}})))
	cav1.RegisterCertificateServiceServer(gs, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(ln) })
	t.Cleanup(func() { gs.Stop(); wg.Wait() })
	return ln.Addr().String()
}

// The bundle of a response replaces the proxy's roots only when it arrives from the
// controller (a server proving the controller's identity under a root held now) and passes
// TrustBundle's checks; otherwise the roots stay and the certificate is refused too.
func TestCAClientUpdatesTrustBundle(t *testing.T) {
	ca, next, stranger := threeCAs(t)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	for _, tc := range []struct {
		name    string
		signer  *identity.CA // signs the certificates
		serving *identity.CA // signs the server's certificate
		bundle  []byte
		roots   int   // roots trusted afterwards
		wantErr error // nil: the certificate is accepted
	}{
		{"both roots from the controller", ca, ca, append(ca.RootPEM(), next.RootPEM()...), 2, nil},
		{"the same root", ca, ca, ca.RootPEM(), 1, nil},
		{"every root replaced", stranger, ca, stranger.RootPEM(), 1, identity.ErrBundleRefused},
		{"a bundle that does not cover the certificate", stranger, ca, append(ca.RootPEM(), next.RootPEM()...), 1, identity.ErrBundleRefused},
		{"an impostor controller", stranger, stranger, append(ca.RootPEM(), stranger.RootPEM()...), 1, errImpostor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveFakeCA(t, &fakeCA{ca: tc.signer, bundle: tc.bundle}, tc.serving)
			trust := identity.NewTrustBundle(ca.Bundle(), nil)
			cc, err := Dial(DialOptions{Address: addr, Token: StaticToken("t"), Bundle: trust})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			csr := newCSR(t, id)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err = NewCAClientWithBundle(cc, trust).CreateCertificate(ctx, id, csr, 0)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("CreateCertificate: %v", err)
			case tc.wantErr == errImpostor && (err == nil || errors.Is(err, identity.ErrBundleRefused)):
				t.Fatalf("CreateCertificate from an impostor = %v, want a failed handshake", err)
			case tc.wantErr != nil && tc.wantErr != errImpostor && !errors.Is(err, tc.wantErr):
				t.Fatalf("CreateCertificate = %v, want %v", err, tc.wantErr)
			}
			if n := len(trust.Roots()); n != tc.roots {
				t.Fatalf("%d roots trusted afterwards, want %d", n, tc.roots)
			}
			if tc.roots == 1 && !trust.Roots()[0].Equal(ca.SignerRoot()) {
				t.Fatal("the root trusted afterwards is not the one held before")
			}
		})
	}
}

var errImpostor = errors.New("impostor")

// newCSR is a CSR for id with a fresh P-256 key.
func newCSR(t *testing.T, id spiffeid.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// threeCAs returns three CAs, each with a root of its own.
func threeCAs(t *testing.T) (a, b, c *identity.CA) {
	t.Helper()
	cas := make([]*identity.CA, 3)
	for i := range cas {
		ca, err := identity.NewCA(identity.CAOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cas[i] = ca
	}
	return cas[0], cas[1], cas[2]
}

// FetchBundle, for a proxy without certificates: the bundle must keep a root held now and
// cover the controller's own chain; a controller that does not know the call changes nothing.
func TestCAClientFetchBundle(t *testing.T) {
	newCA := func() *identity.CA {
		ca, err := identity.NewCA(identity.CAOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	ca, next, stranger := newCA(), newCA(), newCA()
	held := append(ca.RootPEM(), next.RootPEM()...)
	for _, tc := range []struct {
		name    string
		server  cav1.CertificateServiceServer
		bundle  []byte // what the proxy trusts at first
		want    []byte // what it trusts afterwards
		refused bool
	}{
		{"a root added", &fakeCA{bundle: held}, ca.RootPEM(), held, false},
		{"the old root removed", &fakeCA{bundle: ca.RootPEM()}, held, ca.RootPEM(), false},
		{"not covering the controller", &fakeCA{bundle: append(next.RootPEM(), stranger.RootPEM()...)}, held, held, true},
		{"an older controller", &oldController{}, ca.RootPEM(), ca.RootPEM(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveFakeCA(t, tc.server, ca)
			start, err := identity.BundlePEM(identity.CAFiles{ExtraRoots: tc.bundle})
			if err != nil {
				t.Fatal(err)
			}
			b, err := x509bundleFromPEM(start)
			if err != nil {
				t.Fatal(err)
			}
			trust := identity.NewTrustBundle(b, nil)
			cc, err := Dial(DialOptions{Address: addr, Token: StaticToken("t"), Bundle: trust})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			err = NewCAClientWithBundle(cc, trust).FetchBundle(ctx)
			if tc.refused != errors.Is(err, identity.ErrBundleRefused) || !tc.refused && err != nil {
				t.Fatalf("FetchBundle = %v, refused %t", err, tc.refused)
			}
			got, _ := identity.BundlePEM(identity.CAFiles{ExtraRoots: pemOf(trust)})
			if string(got) != string(tc.want) {
				t.Fatalf("trusted afterwards: %d roots, not the ones expected", len(trust.Roots()))
			}
		})
	}
}

func x509bundleFromPEM(b []byte) (*x509bundle.Bundle, error) {
	return x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), b)
}

func pemOf(t *identity.TrustBundle) []byte {
	var out []byte
	for _, r := range t.Roots() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return out
}

// RunBundleRefresh fetches the bundle on every kick (a proxy kicks it when its config stream
// connects) and returns when its context ends.
func TestRunBundleRefresh(t *testing.T) {
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCA{bundle: append(ca.RootPEM(), next.RootPEM()...)}
	addr := serveFakeCA(t, f, ca)
	trust := identity.NewTrustBundle(ca.Bundle(), nil)
	cc, err := Dial(DialOptions{Address: addr, Token: StaticToken("t"), Bundle: trust})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	kick := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- NewCAClientWithBundle(cc, trust).RunBundleRefresh(ctx, kick, slog.New(slog.DiscardHandler))
	}()
	time.Sleep(100 * time.Millisecond)
	if n := len(trust.Roots()); n != 1 {
		t.Fatalf("%d roots before any kick, want 1", n)
	}
	kick <- struct{}{}
	wait.Until(t, 5*time.Second, "the bundle fetched", func() error {
		if n := len(trust.Roots()); n != 2 {
			return fmt.Errorf("%d roots", n)
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunBundleRefresh = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunBundleRefresh did not return after its context ended")
	}
}

// A proxy that missed a step of a root rotation (it trusts the old root only, and the
// controller now serves under the new one) reconnects without a restart once its --root-cert
// file holds the new root, as the lab's trust-bundle.pem and the published ConfigMap do after
// the controller's restart; a file with any other root changes nothing.
func TestDialControllerRecoversFromRootFile(t *testing.T) {
	old, next, stranger := threeCAs(t)
	addr := serveFakeCA(t, &fakeCA{ca: next, bundle: next.RootPEM()}, next)
	dir := t.TempDir()
	rootFile, tokenFile := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "token")
	write := func(path string, b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(rootFile, old.RootPEM())
	write(tokenFile, []byte("t"))
	cc, trust, err := DialController(old.TrustDomain(), rootFile, addr, tokenFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	csr := newCSR(t, id)
	issue := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := NewCAClientWithBundle(cc, trust).CreateCertificate(ctx, id, csr, 0)
		return err
	}
	trusts := func(ca *identity.CA) bool {
		r := trust.Roots()
		return len(r) == 1 && r[0].Equal(ca.SignerRoot())
	}

	for _, file := range []struct {
		name string
		pem  []byte
	}{{"the old root", old.RootPEM()}, {"a stranger's root", stranger.RootPEM()}} {
		write(rootFile, file.pem)
		if err := issue(); err == nil {
			t.Fatalf("with %s in the file: a certificate from a controller under another root", file.name)
		}
		if !trusts(old) {
			t.Fatalf("with %s in the file: the roots changed", file.name)
		}
	}
	write(rootFile, next.RootPEM())
	wait.Until(t, 10*time.Second, "a certificate once the file holds the new root", issue)
	if !trusts(next) {
		t.Fatal("after the recovery the proxy does not trust the new root alone")
	}
}
