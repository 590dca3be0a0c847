package netem

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPacketIDs(t *testing.T) {
	// two NFQNL_MSG_PACKET messages in one datagram, ids 7 and 9, and a foreign message
	pkt := func(id uint32) []byte {
		hdr := append([]byte{0, 0, 0, byte(id)}, 0x08, 0x00, 3) // id, hw protocol, hook
		return message(msgPacket, 0, unix.AF_INET, 5, append(attr(2, []byte{0, 0, 0, 0, 0, 0, 0, 0}), attr(attrPacketHdr, hdr)...))
	}
	b := append(pkt(7), message(msgConfig, 0, 0, 5, nil)...)
	b = append(b, pkt(9)...)
	if got := packetIDs(b); !slices.Equal(got, []uint32{7, 9}) {
		t.Errorf("packetIDs = %v, want [7 9]", got)
	}
	if got := packetIDs(b[:10]); len(got) != 0 {
		t.Errorf("a truncated datagram gave ids %v", got)
	}
	bad := pkt(7)
	bad[nlmsgHdrLen+nfgenHdrLen] = 0xff // an attribute longer than the message
	if got := packetIDs(bad); len(got) != 0 {
		t.Errorf("a malformed attribute gave ids %v", got)
	}
}

func TestConfigRefused(t *testing.T) {
	for _, c := range []Config{{Loss: 1}, {Loss: -0.1}, {Delay: time.Millisecond, Jitter: 2 * time.Millisecond}, {Delay: -1}} {
		if _, err := OnBridge("br", c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// TestOnBridge puts two network namespaces on a bridge of their own and impairs it: round
// trips take twice the delay (each direction is delayed), within the jitter; with loss, some
// packets are dropped and every exchange still completes (TCP retransmits); after Close the
// round trips are fast again and the rule is gone.
func TestOnBridge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, a bridge and iptables rules")
	}
	suffix := fmt.Sprint(os.Getpid() % 100000)
	br := "nmbr" + suffix
	a, b, addr := pairOnBridge(t, br, suffix)

	fast := median(t, roundTrips(t, a, b, addr, 20))
	link, err := OnBridge(br, Config{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.03, Queue: uint16(os.Getpid() % 60000)})
	if err != nil {
		t.Fatal(err)
	}
	rtts := roundTrips(t, a, b, addr, 150)
	slow := median(t, rtts)
	st := link.Stats()
	if err := link.Close(); err != nil {
		t.Fatal(err)
	}
	after := median(t, roundTrips(t, a, b, addr, 20))
	t.Logf("median round trip: %v before, %v impaired (%d packets seen, %d dropped), %v after", fast, slow, st.Seen, st.Dropped, after)
	if slow < 30*time.Millisecond || slow > 80*time.Millisecond {
		t.Errorf("impaired median round trip %v, want about 40 ms (2 × 20 ± 5 ms)", slow)
	}
	if st.Seen < 300 || st.Dropped == 0 {
		t.Errorf("stats %+v: want every packet seen and some dropped at 3%% loss", st)
	}
	if after > 10*time.Millisecond {
		t.Errorf("round trip %v after Close, want the unimpaired path back", after)
	}
	if out, _ := exec.Command("iptables", "-w", "-t", "mangle", "-S", "FORWARD").CombinedOutput(); strings.Contains(string(out), br) {
		t.Errorf("a rule for %s is left:\n%s", br, out)
	}
}

// pairOnBridge makes namespaces a and b with 10.199.x.1 and .2 on a new bridge, and returns
// them as paths under /run/netns, and an address of b to listen on.
func pairOnBridge(t *testing.T, br, suffix string) (string, string, string) {
	t.Helper()
	na, nb := "nma"+suffix, "nmb"+suffix
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", na).Run()
		_ = exec.Command("ip", "netns", "del", nb).Run()
		_ = exec.Command("ip", "link", "del", br).Run()
	})
	run("link", "add", br, "type", "bridge")
	run("link", "set", br, "up")
	subnet := fmt.Sprintf("10.199.%d", len(suffix)%200)
	for i, ns := range []string{na, nb} {
		host, peer := fmt.Sprintf("nmh%d%s", i, suffix), fmt.Sprintf("nmp%d%s", i, suffix)
		run("netns", "add", ns)
		run("link", "add", host, "type", "veth", "peer", "name", peer)
		run("link", "set", host, "master", br, "up")
		run("link", "set", peer, "netns", ns)
		run("-n", ns, "addr", "add", fmt.Sprintf("%s.%d/24", subnet, i+1), "dev", peer)
		run("-n", ns, "link", "set", peer, "up")
		run("-n", ns, "link", "set", "lo", "up")
	}
	return "/run/netns/" + na, "/run/netns/" + nb, subnet + ".2:7"
}

// roundTrips opens a TCP connection from namespace a to an echo server in b at addr and times n
// one-byte exchanges over it.
func roundTrips(t *testing.T, a, b, addr string, n int) []time.Duration {
	t.Helper()
	ln := inNetns(t, b, func() (any, error) { return net.Listen("tcp", addr) }).(net.Listener)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	c := inNetns(t, a, func() (any, error) { return net.DialTimeout("tcp", addr, 10*time.Second) }).(net.Conn)
	defer c.Close()
	out := make([]time.Duration, 0, n)
	buf := make([]byte, 1)
	for range n {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := c.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

// inNetns runs fn on a thread inside the namespace at path (sockets keep the namespace they
// were made in).
func inNetns(t *testing.T, path string, fn func() (any, error)) any {
	t.Helper()
	type result struct {
		v   any
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open(path)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		v, err := fn()
		ch <- result{v, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.v
}

func median(t *testing.T, d []time.Duration) time.Duration {
	t.Helper()
	if len(d) == 0 {
		t.Fatal("no round trips")
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
