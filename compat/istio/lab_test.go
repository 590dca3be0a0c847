package istio

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"ambit.dev/mesh/gobuild"
	"ambit.dev/mesh/identity"
	"ambit.dev/proto/nodeapi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"
	ihbone "istio.io/istio/pkg/hbone"
)

// The tests in this file repeat the interop checks against ztunnels running in a lab
// (ambitctl lab up, testdata/lab.yaml): Istio's HBONE client reaches an application through
// our running ztunnel, and our running ztunnel carries a pod's traffic to Istio's HBONE
// server. This module stays outside go.work, so the lab is driven through the ambitctl
// binary and its state.json.

const (
	labPrefix   = "ambitcp"
	labPortBase = 26000 // below the ephemeral range (32768+), where outgoing connections could take a port
)

// labState is the part of the lab's state.json these tests read.
type labState struct {
	Nodes []struct {
		Name    string `json:"name"`
		Ztunnel struct {
			PID int `json:"pid"`
		} `json:"ztunnel"`
		NodeAPI string `json:"nodeAPI"`
	} `json:"nodes"`
	Pods []struct {
		Name  string `json:"name"`
		Node  string `json:"node"`
		UID   string `json:"uid"`
		NetNS string `json:"netns"`
		IP    string `json:"ip"`
	} `json:"pods"`
}

type runningLab struct {
	dir   string
	state labState
	ca    *identity.CA
}

func (l *runningLab) pod(t *testing.T, name string) (netns string, ip netip.Addr) {
	t.Helper()
	for _, p := range l.state.Pods {
		if p.Name == name {
			return p.NetNS, netip.MustParseAddr(p.IP)
		}
	}
	t.Fatalf("lab has no pod %s", name)
	return "", netip.Addr{}
}

var (
	labOnce sync.Once
	theLab  *runningLab
	labErr  error
	labDown func()
)

// startLab builds the binaries from this tree, brings the lab up once and takes it down when
// the package's tests end (see TestMain).
func startLab(t *testing.T) *runningLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the lab creates network namespaces, links and iptables rules")
	}
	labOnce.Do(func() { theLab, labErr = bringUp() })
	if labErr != nil {
		t.Fatal(labErr)
	}
	return theLab
}

func bringUp() (*runningLab, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	bin, err := os.MkdirTemp("", "ambit-compat-bin-")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(os.TempDir(), "ambit-lab-compat")
	if err := gobuild.Build(root, bin+"/", []string{"GOWORK=" + filepath.Join(root, "go.work")}, "ambit.dev/controller/cmd/controller",
		"ambit.dev/controller/cmd/ambitctl", "ambit.dev/ztunnel/cmd/ztunnel"); err != nil {
		return nil, fmt.Errorf("build the lab binaries: %w", err)
	}
	ambitctl := filepath.Join(bin, "ambitctl")
	labDown = func() {
		if out, err := exec.Command(ambitctl, "lab", "down", "--lab-dir", dir, "--prefix", labPrefix).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "lab down: %v\n%s", err, out)
		}
		os.RemoveAll(bin)
	}
	up := exec.Command(ambitctl, "lab", "up", "-f", "testdata/lab.yaml", "--lab-dir", dir,
		"--prefix", labPrefix, "--port-base", fmt.Sprint(labPortBase), "--bin-dir", bin)
	if out, err := up.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("lab up: %v\n%s", err, out)
	}
	l := &runningLab{dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &l.state); err != nil {
		return nil, err
	}
	// The lab's controller keeps its CA root in <dir>/ca: the tests sign the Istio side's
	// certificates with the mesh's own root.
	l.ca, err = identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		return nil, err
	}
	return l, nil
}

func labID(sa string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/" + sa)
}

// inNetns runs fn on a thread inside the network namespace at path.
func inNetns(path string, fn func() error) error {
	target, err := os.Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked on failure: the thread then dies with us
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// TestIstioClientThroughRunningZtunnel: Istio's HBONE client, with an SVID from the mesh's
// root, reaches the server pod's applications through the ztunnel that captures it; the
// server sees the Istio client's identity.
func TestIstioClientThroughRunningZtunnel(t *testing.T) {
	l := startLab(t)
	_, server := l.pod(t, "server")
	istioID := labID("istio-client")
	d := istioDialer(netip.AddrPortFrom(server, 15008), issue(t, l.ca, istioID), l.ca.Bundle(), labID("server"))

	c, err := d.Dial("tcp", netip.AddrPortFrom(server, 8080).String())
	if err != nil {
		t.Fatalf("Istio client through the running ztunnel: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /?format=json HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("answer through the tunnel: %v", err)
	}
	defer resp.Body.Close()
	var echo struct {
		Identity string `json:"identity"`
		MTLS     bool   `json:"mtls"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&echo); err != nil {
		t.Fatal(err)
	}
	if !echo.MTLS || echo.Identity != istioID.String() {
		t.Fatalf("the server saw %+v; want identity %s over mTLS", echo, istioID)
	}

	// A megabyte each way on the TCP echo, through the same pooled connection.
	e, err := d.Dial("tcp", netip.AddrPortFrom(server, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	payload := randomBytes(t, 1<<20)
	got, err := roundTrip(e, payload)
	if err != nil || len(got) != len(payload) || string(got) != string(payload) {
		t.Fatalf("1 MiB echo through the running ztunnel: %d bytes back, %v", len(got), err)
	}

	// An identity from another root is refused by the running ztunnel.
	other := newPKI(t)
	bad := istioDialer(netip.AddrPortFrom(server, 15008), issue(t, other.ca, istioID), l.ca.Bundle(), labID("server"))
	if c, err := bad.Dial("tcp", netip.AddrPortFrom(server, 8080).String()); err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if n, _ := c.Read(make([]byte, 1)); n > 0 {
			t.Fatal("a client certificate from another root got through the running ztunnel")
		}
		c.Close()
	}
}

// TestRunningZtunnelToIstioServer: a captured pod's plain TCP connection is carried by its
// running ztunnel over HBONE to Istio's HBONE server, which serves the pod "istio" in place
// of a ztunnel and sees the client pod's identity.
func TestRunningZtunnelToIstioServer(t *testing.T) {
	l := startLab(t)
	istioNS, istioIP := l.pod(t, "istio")
	clientNS, _ := l.pod(t, "client")

	// node-c's ztunnel gives the pod up and stops: Istio's server takes its place.
	for _, n := range l.state.Nodes {
		if n.Name != "node-c" {
			continue
		}
		for _, p := range l.state.Pods {
			if p.Node == "node-c" {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := nodeapi.NewClient(n.NodeAPI).Remove(ctx, p.UID)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		_ = syscall.Kill(n.Ztunnel.PID, syscall.SIGKILL)
	}

	peers := make(chan string, 16)
	s := ihbone.NewServer()
	s.Protocols.SetHTTP2(true)
	s.ErrorLog = stdlog.New(io.Discard, "", 0)
	s.TLSConfig = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		Certificates: []tls.Certificate{*issue(t, l.ca, labID("istio"))},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := identity.VerifyPeer(raw, l.ca.Bundle())
			if err == nil {
				peers <- id.String()
			}
			return err
		},
	}
	var ln net.Listener
	if err := inNetns(istioNS, func() error {
		var err error
		ln, err = net.Listen("tcp", ":15008")
		return err
	}); err != nil {
		t.Fatalf("Istio's server on the pod's 15008: %v", err)
	}
	go func() { _ = s.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { s.Close() })

	var c net.Conn
	if err := inNetns(clientNS, func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(istioIP, 9000).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("client pod to the Istio-served pod: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	payload := randomBytes(t, 256<<10)
	got, err := roundTrip(c, payload)
	if err != nil || string(got) != string(payload) {
		t.Fatalf("256 KiB echo via our ztunnel and Istio's server: %d bytes back, %v", len(got), err)
	}
	select {
	case id := <-peers:
		if id != labID("client").String() {
			t.Fatalf("Istio's server saw client identity %s; want %s", id, labID("client"))
		}
	default:
		t.Fatal("Istio's server verified no client certificate: the traffic did not come over HBONE")
	}
}
