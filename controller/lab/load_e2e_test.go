package lab

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/wait"
	"golang.org/x/sys/unix"
)

// Load tests (issue 13): one ztunnel holding tens of thousands of concurrent tunnels, with its
// memory per tunnel.

// tunnelsHeld is how many tunnels TestLabZtunnel20kTunnels holds open. The issue asks for
// 20,000; this machine caps every process at 20,000 open files (the hard limit, which root
// cannot raise here: the container lacks CAP_SYS_RESOURCE), and each tunnel is a socket in
// both ztunnels (the accepted connection in the source's, the connection to the app in the
// destination's) and in this test, beside their other files.
const tunnelsHeld = 19000

// procStatusKB reads a "Key: value kB" field of /proc/pid/status, in kB.
func procStatusKB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key+":" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
}

func fdCount(pid int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds), err
}

// TestLabZtunnel20kTunnels opens tunnelsHeld (19,000) connections from the client to the server's tcp-echo
// app, each captured by the client's ztunnel and carried as its own HBONE stream to the
// server's ztunnel, and holds them all open at once: every one carries a line both ways, the
// ztunnels' memory per tunnel is reported, and when they close the ztunnels' file descriptors
// come back to where they were.
func TestLabZtunnel20kTunnels(t *testing.T) {
	const n = tunnelsHeld
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	cur, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	src, dst := cur.node(client.Node).Ztunnel.PID, cur.node(server.Node).Ztunnel.PID
	echo := 0
	for _, a := range server.Apps {
		if a.Kind == "tcp-echo" {
			echo = a.Proc.PID
		}
	}
	if echo == 0 {
		t.Fatal("the server pod runs no tcp-echo app")
	}
	for _, pid := range []int{0, src, dst, echo} {
		var lim unix.Rlimit
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil || lim.Cur < n+500 {
			t.Fatalf("process %d may open %d files (%v), fewer than the %d tunnels need", pid, lim.Cur, err, n)
		}
	}
	addr := server.IP + ":9000"
	if err := tcpEcho(client, addr); err != nil {
		t.Fatal(err)
	}
	type usage struct{ rss, fds int64 }
	read := func(pid int) usage {
		rss, err := procStatusKB(pid, "VmRSS")
		if err != nil {
			t.Fatal(err)
		}
		fds, err := fdCount(pid)
		if err != nil {
			t.Fatal(err)
		}
		return usage{rss, int64(fds)}
	}
	before := map[int]usage{src: read(src), dst: read(dst)}

	conns := make([]net.Conn, n)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed []error
	)
	next := make(chan int)
	start := time.Now()
	for range 64 {
		wg.Go(func() {
			for i := range next {
				c, err := DialIn(client.NetNS, addr, 20*time.Second)
				if err == nil {
					msg := fmt.Sprintf("tunnel %d\n", i)
					_ = c.SetDeadline(time.Now().Add(20 * time.Second))
					buf := make([]byte, len(msg))
					if _, err = io.WriteString(c, msg); err == nil {
						_, err = io.ReadFull(c, buf)
					}
					if err == nil && string(buf) != msg {
						err = fmt.Errorf("echoed %q, want %q", buf, msg)
					}
					_ = c.SetDeadline(time.Time{})
				}
				if err != nil {
					mu.Lock()
					failed = append(failed, fmt.Errorf("tunnel %d: %w", i, err))
					mu.Unlock()
					if c != nil {
						c.Close()
					}
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	opened := time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if len(failed) > 0 {
		t.Fatalf("%d of %d tunnels failed, first: %v", len(failed), n, failed[0])
	}
	time.Sleep(time.Second) // the ztunnels settle: every stream's buffers in place
	held := map[int]usage{src: read(src), dst: read(dst)}
	// every tunnel still carries data after all are open
	for _, i := range []int{0, n / 2, n - 1} {
		msg := "still\n"
		_ = conns[i].SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, len(msg))
		if _, err := io.WriteString(conns[i], msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conns[i], buf); err != nil || string(buf) != msg {
			t.Fatalf("tunnel %d after all were open: %q, %v", i, buf, err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	// The tunnels' files go; the pooled HBONE connections that carried them (a stream limit
	// of hbone.DefaultClientMaxStreams each) stay until they have been idle for the HBONE idle
	// timeout, as they would to serve the next burst.
	pooled := int64(n/hbone.DefaultClientMaxStreams + 1)
	for _, pid := range []int{src, dst} {
		wait.Until(t, 60*time.Second, fmt.Sprintf("ztunnel %d's file descriptors back to %d and its pooled connections", pid, before[pid].fds), func() error {
			fds, err := fdCount(pid)
			if err != nil {
				return err
			}
			if int64(fds) > before[pid].fds+pooled+20 {
				return fmt.Errorf("%d open", fds)
			}
			return nil
		})
	}
	for _, side := range []struct {
		name string
		pid  int
	}{{"source", src}, {"destination", dst}} {
		b, h := before[side.pid], held[side.pid]
		per := float64(h.rss-b.rss) * 1024 / n
		t.Logf("%s ztunnel: %d → %d kB RSS holding %d tunnels (%.0f bytes per tunnel), %d → %d fds",
			side.name, b.rss, h.rss, n, per, b.fds, h.fds)
		if per > 64<<10 {
			t.Errorf("%s ztunnel: %.0f bytes per tunnel, want well under 64 KiB", side.name, per)
		}
	}
	t.Logf("%d tunnels opened (each with a round trip) in %v", n, opened.Round(time.Millisecond))
}
