package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"google.golang.org/protobuf/encoding/protojson"
)

const tunnelLabel = "ambit.dev/tunnel-protocol"

// lockedBuffer is a bytes.Buffer that a command writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// ztunnelDump reads the /config_dump of node's ztunnel.
func ztunnelDump(node string) (*dump.Ztunnel, error) {
	admin, err := NodeAdminAddr(e2eOpts.Dir, node)
	if err != nil {
		return nil, err
	}
	resp, err := http.Get("http://" + admin + "/config_dump")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var d dump.Ztunnel
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("%s's config_dump: %w", node, err)
	}
	return &d, nil
}

// tunnelOf is the tunnel protocol node's ztunnel holds for workload ns/name.
func tunnelOf(node, ns, name string) (configv1.TunnelProtocol, error) {
	d, err := ztunnelDump(node)
	if err != nil {
		return 0, err
	}
	for _, raw := range d.Workloads {
		var w configv1.Workload
		if err := protojson.Unmarshal(raw, &w); err != nil {
			return 0, err
		}
		if w.GetNamespace() == ns && w.GetName() == name {
			return w.GetTunnelProtocol(), nil
		}
	}
	return 0, fmt.Errorf("%s's ztunnel has no workload %s/%s", node, ns, name)
}

// capture runs tcpdump on the lab's bridge with filter until stop is called, which returns
// one line per packet ("-q": "... > a.b.c.d.15008: UDP, length N" or "...: tcp N").
func capture(t *testing.T, bridge, filter string) (stop func() []string) {
	t.Helper()
	var out, errb lockedBuffer
	cmd := exec.Command("tcpdump", "-i", bridge, "-nn", "-q", "-l", "-U", filter)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Skipf("tcpdump: %v", err)
	}
	wait.Until(t, 5*time.Second, "tcpdump to listen", func() error {
		if !strings.Contains(errb.String(), "listening on") {
			return fmt.Errorf("tcpdump: %s", errb.String())
		}
		return nil
	})
	return func() []string {
		time.Sleep(300 * time.Millisecond) // the last packets reach tcpdump's output
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
		return lines
	}
}

// TestLabHTTP3: a namespace labelled ambit.dev/tunnel-protocol=hbone-h3 is reached over
// HBONE on HTTP/3: calls across nodes succeed with the client's identity, and on the wire
// between the pods there is UDP 15008 and no new TCP 15008 connection. With UDP 15008
// dropped in the destination pod, calls still succeed, over TCP 15008, and the source
// ztunnel's /config_dump lists the fallback.
func TestLabHTTP3(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	other, server2 := pod(t, st, "demo", "other"), pod(t, st, "demo", "server-2")
	if client.Node == server.Node || other.Node == server2.Node {
		t.Fatal("topology: client/server and other/server-2 must be on different nodes")
	}
	// server-2 drops UDP 15008 from the start, so that other's first HTTP/3 attempt to it
	// fails (an established QUIC connection would only die after its idle timeout).
	drop := []string{"INPUT", "-p", "udp", "--dport", "15008", "-j", "DROP"}
	ipt := func(op string) error {
		out, err := exec.Command("nsenter", append([]string{"--net=" + server2.NetNS, "--", "iptables", op}, drop...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s in server-2: %v: %s", op, err, out)
		}
		return nil
	}
	if err := ipt("-I"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ipt("-D"); err != nil {
			t.Error(err)
		}
	})

	if _, err := configdir.SetNamespaceLabel(st.ConfigDir, "demo", tunnelLabel, "hbone-h3"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := configdir.RemoveNamespaceLabel(st.ConfigDir, "demo", tunnelLabel); err != nil {
			t.Error(err)
			return
		}
		wait.Until(t, settle, "demo back on HTTP/2", func() error {
			if p, err := tunnelOf(client.Node, "demo", "server"); err != nil || p != configv1.TunnelProtocol_HBONE {
				return fmt.Errorf("demo/server is %v, %v", p, err)
			}
			return nil
		})
	})
	wait.Until(t, settle, "both ztunnels to hold demo's destinations as HBONE_H3", func() error {
		for _, c := range []struct{ node, name string }{{client.Node, "server"}, {other.Node, "server-2"}} {
			if p, err := tunnelOf(c.node, "demo", c.name); err != nil || p != configv1.TunnelProtocol_HBONE_H3 {
				return fmt.Errorf("%s sees demo/%s as %v, %v", c.node, c.name, p, err)
			}
		}
		return nil
	})

	// HTTP/3: UDP between the two pods, no TCP handshake to 15008.
	stop := capture(t, st.Bridge, fmt.Sprintf("host %s and host %s and (udp port 15008 or (tcp port 15008 and tcp[tcpflags] & tcp-syn != 0))",
		client.IP, server.IP))
	for i := range 3 {
		e, err := get(client, "http://"+server.IP+":8080/")
		if err != nil {
			stop()
			t.Fatalf("call %d over HTTP/3: %v", i, err)
		}
		if !e.MTLS || e.Identity != "spiffe://cluster.local/ns/demo/sa/client" {
			stop()
			t.Fatalf("server saw identity %q (mtls %v), want the client's over mTLS", e.Identity, e.MTLS)
		}
	}
	if err := tcpEcho(client, server.IP+":9000"); err != nil {
		stop()
		t.Fatal(err)
	}
	var udp, syn int
	pkts := stop()
	for _, l := range pkts {
		switch {
		case strings.Contains(l, "UDP"):
			udp++
		case strings.Contains(l, "tcp"):
			syn++
		}
	}
	if udp == 0 || syn != 0 {
		t.Fatalf("between client and server: %d UDP 15008 packets, %d TCP 15008 handshakes; want UDP only:\n%s", udp, syn, strings.Join(pkts, "\n"))
	}
	t.Logf("client → server: %d UDP 15008 packets, no TCP 15008 handshake", udp)
	if d, err := ztunnelDump(client.Node); err != nil || len(d.TunnelFallbacks) != 0 {
		t.Fatalf("%s fell back: %+v, %v", client.Node, d, err)
	}

	// Fallback: server-2 drops UDP 15008; other reaches it over TCP 15008 all the same.
	stop = capture(t, st.Bridge, fmt.Sprintf("host %s and host %s and port 15008", other.IP, server2.IP))
	e, err := get(other, "http://"+server2.IP+":8080/")
	if err != nil {
		stop()
		t.Fatalf("call with UDP 15008 dropped: %v", err)
	}
	if !e.MTLS || e.Identity != "spiffe://cluster.local/ns/demo/sa/other" {
		stop()
		t.Fatalf("server-2 saw identity %q (mtls %v), want other's over mTLS", e.Identity, e.MTLS)
	}
	if err := tcpEcho(other, server2.IP+":9000"); err != nil {
		stop()
		t.Fatal(err)
	}
	udp, syn = 0, 0
	pkts = stop()
	for _, l := range pkts {
		switch {
		case strings.Contains(l, "UDP"):
			udp++
		case strings.Contains(l, "tcp"):
			syn++
		}
	}
	if udp == 0 || syn == 0 {
		t.Fatalf("other → server-2: %d UDP, %d TCP packets on 15008; want the QUIC attempt, then TCP:\n%s", udp, syn, strings.Join(pkts, "\n"))
	}
	d, err := ztunnelDump(other.Node)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, fb := range d.TunnelFallbacks {
		found = found || (fb.Pod == "demo/other" && fb.Peer == server2.IP+":15008")
	}
	if !found {
		t.Fatalf("%s's tunnel_fallbacks = %+v, want demo/other → %s:15008", other.Node, d.TunnelFallbacks, server2.IP)
	}
}
