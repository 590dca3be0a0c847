package xdsclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	cav1 "ambit.dev/proto/ca/v1"
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

func serveFakeCA(t *testing.T, f *fakeCA, serving *identity.CA) string {
	t.Helper()
	td := f.ca.TrustDomain()
	cert := identitytest.Issue(t, serving, ControllerID(td), time.Hour)
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
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
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
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := identity.CreateCSR(key, id)
			if err != nil {
				t.Fatal(err)
			}
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
