package caserver

import (
	"context"
	"net"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/xdsclient"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
)

func TestListener(t *testing.T) {
	ca, err := identity.NewCA(identity.CAOptions{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := EnsureNodeTokens(dir, "node-a"); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{CA: ca, Authenticator: &TokenDir{Dir: dir},
		Identities: NodeIdentitiesFunc(func(node string, id spiffeid.ID) bool { return node == "node-a" && id == idA })})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewListener(ListenerOptions{Listener: lis, CA: ca, Services: []func(*grpc.Server){srv.Register}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()

	e := &caEnv{ca: ca, addr: lis.Addr().String(), tokens: dir}
	cc, err := xdsclient.Dial(xdsclient.DialOptions{Address: e.addr, Token: xdsclient.TokenFile(dir + "/node-a"), Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := xdsclient.NewCAClient(cc).CreateCertificate(ctx, idA, mustCSR(t, idA), time.Hour)
	cc.Close()
	if err != nil {
		t.Fatalf("CreateCertificate through the listener: %v", err)
	}
	if got, err := identity.VerifyPeer(chain, ca.Bundle()); err != nil || got != idA {
		t.Errorf("certificate: %v, %v", got, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
