package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"ambit.dev/mesh/wait"
)

// netns is a network namespace the test owns; do runs f on a thread inside it, so that
// the sockets f opens live there.
type netns struct {
	name string
	fd   int
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and iptables rules in it")
	}
	name := fmt.Sprintf("hbone-h3-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &netns{name: name, fd: int(f.Fd())}
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (n *netns) do(f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return err // the thread stays locked and dies with its goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

// TestH3FallbackWhenUDPDropped: with UDP 15008 dropped by iptables, a client asked for
// HTTP/3 gives up on QUIC after H3HandshakeTimeout, carries the stream over HTTP/2, and
// does not try QUIC again for H3FallbackPeriod; after that, with UDP open again, it is
// back on HTTP/3.
func TestH3FallbackWhenUDPDropped(t *testing.T) {
	ns := newNetns(t)
	var sockets atomic.Int32
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = ns.do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	var e *env
	err := ns.do(func() error {
		e = newEnv(t, withProto(ProtocolH3), func(_ *env, _ *ServerConfig, c *ClientConfig) {
			c.H3HandshakeTimeout = 300 * time.Millisecond
			c.H3FallbackPeriod = time.Second
			c.DialContext = dial
			c.ListenPacket = func(_ context.Context, network, _ string) (pc net.PacketConn, err error) {
				sockets.Add(1)
				err = ns.do(func() error { pc, err = net.ListenUDP(network, nil); return err })
				return pc, err
			}
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
		_ = Forward(ctx, r, func(ctx context.Context, dst netip.AddrPort) (HalfCloser, error) {
			c, err := dial(ctx, "tcp", dst.String())
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		})
	})
	port := fmt.Sprint(e.addr.Port())
	rule := []string{"INPUT", "-p", "udp", "--dport", port, "-j", "DROP"}
	run(t, append([]string{"ip", "netns", "exec", ns.name, "iptables", "-A"}, rule...)...)

	echo := func(want Protocol) {
		t.Helper()
		st, err := e.client.Dial(context.Background(), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if st.Protocol() != want {
			t.Fatalf("stream on %s, want %s", st.Protocol(), want)
		}
		if _, err := st.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := st.Read(buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo %q, %v", buf, err)
		}
	}
	echo(ProtocolH2)
	if !e.client.FallbackH2(e.addr) {
		t.Fatal("client does not remember the fallback")
	}
	echo(ProtocolH2)
	if n := sockets.Load(); n != 1 {
		t.Fatalf("%d QUIC attempts, want 1: the fallback is remembered", n)
	}

	run(t, append([]string{"ip", "netns", "exec", ns.name, "iptables", "-D"}, rule...)...)
	wait.Until(t, 10*time.Second, "the remembered fallback to expire", func() error {
		if e.client.FallbackH2(e.addr) {
			return errors.New("the client still falls back to HTTP/2")
		}
		return nil
	})
	echo(ProtocolH3)
}
