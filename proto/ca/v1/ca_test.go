package cav1_test

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	cav1 "ambit.dev/proto/ca/v1"
)

// fakeCA answers from a table; it checks that the generated service wiring carries every
// field both ways over a real gRPC connection.
type fakeCA struct {
	cav1.UnimplementedCertificateServiceServer
}

func (fakeCA) CreateCertificate(_ context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	if req.GetCsr() == "" {
		return nil, status.Error(codes.InvalidArgument, "csr: empty")
	}
	return &cav1.CreateCertificateResponse{
		CertChain:  []string{"leaf for " + req.GetIdentity(), "intermediate"},
		RootBundle: "root",
	}, nil
}

func TestCreateCertificateOverGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	cav1.RegisterCertificateServiceServer(srv, fakeCA{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := cav1.NewCertificateServiceClient(conn)

	const id = "spiffe://cluster.local/ns/shop/sa/web"
	resp, err := client.CreateCertificate(t.Context(), &cav1.CreateCertificateRequest{
		Csr:             "-----BEGIN CERTIFICATE REQUEST-----\n...",
		ValiditySeconds: 86400,
		Identity:        id,
	})
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	if got := resp.GetCertChain(); len(got) != 2 || got[0] != "leaf for "+id {
		t.Errorf("cert_chain = %q", got)
	}
	if resp.GetRootBundle() != "root" {
		t.Errorf("root_bundle = %q", resp.GetRootBundle())
	}

	_, err = client.CreateCertificate(t.Context(), &cav1.CreateCertificateRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("empty csr: got %v, want InvalidArgument", err)
	}
}
