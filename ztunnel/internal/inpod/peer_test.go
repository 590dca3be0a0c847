package inpod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/nodeapi"
	"ambit.dev/ztunnel/internal/capture"
	"ambit.dev/ztunnel/internal/netnstest"
	"google.golang.org/protobuf/proto"
)

// serveAPI serves the node's API on a unix socket and returns a client for it.
func serveAPI(t *testing.T, n *node) (*nodeapi.Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ztunnel.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: n.m.Handler()}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return nodeapi.NewClient(sock), sock
}

// startWhoApp runs, inside the server pod, the lab's kind of echo server: for each
// connection it asks the node API who the caller is and answers with what it saw.
func startWhoApp(t *testing.T, n *node, api *nodeapi.Client) {
	t.Helper()
	ln, err := listenIn(n.server, "10.250.0.2:8081")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	netnstest.Serve(ln, func(c net.Conn) {
		remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := api.Peer(ctx, remote, local)
		fmt.Fprintf(c, "remote=%s identity=%s mtls=%v err=%v", remote.Addr(), p.Identity, p.MTLS, err)
	})
}

func (n *node) callTo(addr string) (string, error) {
	var c net.Conn
	err := capture.InNetns(n.client, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// waitNoPeers waits until the node holds no peer record: every connection is gone.
func waitNoPeers(t *testing.T, n *node) {
	t.Helper()
	wait.Until(t, 5*time.Second, "no peer records after every connection closed", func() error {
		if left := n.m.node.Peers(); left != 0 {
			return fmt.Errorf("%d left", left)
		}
		return nil
	})
}

func TestPeerLookup(t *testing.T) {
	n := newNode(t)
	api, _ := serveAPI(t, n)
	startWhoApp(t, n, api)
	ctx := t.Context()
	for _, uid := range []string{"client", "server"} {
		if err := api.Add(ctx, nodeapi.Registration{UID: uid, NetNS: map[string]string{"client": n.client, "server": n.server}[uid]}); err != nil {
			t.Fatal(err)
		}
	}
	// Over HBONE the application sees the client pod's address and learns its verified
	// identity.
	for range 20 {
		got, err := n.callTo("10.250.0.2:8081")
		if err != nil || got != "remote=10.250.0.1 identity=spiffe://cluster.local/ns/shop/sa/client mtls=true err=<nil>" {
			t.Fatalf("HBONE call: app saw %q, %v", got, err)
		}
	}
	waitNoPeers(t, n)

	// Plaintext from an uncaptured client: the client's address too, no identity.
	cw := workload("client", "10.250.0.1", "client")
	cw.TunnelProtocol = configv1.TunnelProtocol_NONE
	_ = n.st.Apply(configv1.WorkloadTypeURL, map[string]proto.Message{"c//Pod/shop/client": cw}, nil)
	n.m.Reconcile(ctx)
	got, err := n.callTo("10.250.0.2:8081")
	if err != nil || got != "remote=10.250.0.1 identity= mtls=false err=<nil>" {
		t.Fatalf("plaintext call: app saw %q, %v", got, err)
	}
	waitNoPeers(t, n)

	// A connection ztunnel does not carry is unknown.
	_, err = api.Peer(ctx, netip.MustParseAddrPort("10.250.0.1:1234"), netip.MustParseAddrPort("10.250.0.2:8081"))
	if !errors.Is(err, nodeapi.ErrUnknownPeer) {
		t.Fatalf("lookup of an unknown connection: %v", err)
	}
}
