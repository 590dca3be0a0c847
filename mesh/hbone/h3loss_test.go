package hbone

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"ambit.dev/mesh/wait"
	"golang.org/x/sys/unix"
)

// lossyRelay forwards UDP between one client and a server on loopback, dropping each
// datagram with a probability, and counts the datagrams that repeat the one before them in
// the same direction: the loss shield's copies.
type lossyRelay struct {
	pc       *net.UDPConn
	server   *net.UDPAddr
	client   atomic.Pointer[net.UDPAddr]
	dropPerK atomic.Uint32 // per 1,000 datagrams
	dups     atomic.Uint64
	dropped  atomic.Uint64
}

func newLossyRelay(t *testing.T, server netip.AddrPort) *lossyRelay {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &lossyRelay{pc: pc, server: net.UDPAddrFromAddrPort(server)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 64<<10)
		var last [2][]byte
		for {
			n, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			dir, to := 0, r.server
			if from.AddrPort() == server {
				dir, to = 1, r.client.Load()
				if to == nil {
					continue
				}
			} else {
				r.client.Store(from)
			}
			p := buf[:n]
			if bytes.Equal(p, last[dir]) {
				r.dups.Add(1)
			}
			last[dir] = append(last[dir][:0], p...)
			if rng.Uint32N(1000) < r.dropPerK.Load() {
				r.dropped.Add(1)
				continue
			}
			_, _ = pc.WriteToUDP(p, to)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return r
}

// exchange makes small request/response exchanges over each of sts at once for d, and
// returns how many. Concurrent streams keep packets in flight, so that quic-go detects a
// loss from the acknowledgement of a later packet (and counts it) rather than by a probe.
func exchange(t *testing.T, sts []*Stream, d time.Duration) int {
	t.Helper()
	var total atomic.Int64
	errs := make(chan error, len(sts))
	end := time.Now().Add(d)
	for _, st := range sts {
		go func() {
			msg := bytes.Repeat([]byte("x"), 200)
			got := make([]byte, len(msg))
			for time.Now().Before(end) {
				if _, err := st.Write(msg); err != nil {
					errs <- fmt.Errorf("write: %w", err)
					return
				}
				if _, err := io.ReadFull(st, got); err != nil {
					errs <- fmt.Errorf("read: %w", err)
					return
				}
				total.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
			errs <- nil
		}()
	}
	for range sts {
		if err := <-errs; err != nil {
			t.Fatalf("exchange %d: %v", total.Load(), err)
		}
	}
	return int(total.Load())
}

// TestH3LossShield: over a clean path no packet is sent twice; once the path loses 4 % of
// the datagrams, both ends measure it within a few windows and send their short packets
// twice; the exchanges go on without error. With the shield turned off, the same loss
// brings no copy.
func TestH3LossShield(t *testing.T) {
	for _, tc := range []struct {
		name      string
		threshold float64
		wantDups  bool
	}{{"on", 0, true}, {"off", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withProto(ProtocolH3), func(_ *env, s *ServerConfig, c *ClientConfig) {
				s.H3LossThreshold, c.H3LossThreshold = tc.threshold, tc.threshold
			})
			relay := newLossyRelay(t, e.addr)
			tgt := e.target()
			tgt.Address = relay.pc.LocalAddr().(*net.UDPAddr).AddrPort()
			before := ReadH3LossStats()
			sts := make([]*Stream, 8)
			for i := range sts {
				st, err := e.client.Dial(context.Background(), tgt)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if st.Protocol() != ProtocolH3 {
					t.Fatalf("tunnel is %v, want HTTP/3", st.Protocol())
				}
				sts[i] = st
			}
			n := exchange(t, sts, 2500*time.Millisecond)
			if d := relay.dups.Load(); d != 0 {
				t.Fatalf("clean path: %d datagrams sent twice in %d exchanges", d, n)
			}
			relay.dropPerK.Store(40)
			// on: until both ends shield (a window of a second each, once 100 packets went);
			// off: as long as that took in the on case here, and more
			deadline := time.Now().Add(15 * time.Second)
			if !tc.wantDups {
				deadline = time.Now().Add(4 * time.Second)
			}
			for time.Now().Before(deadline) && (!tc.wantDups || relay.dups.Load() < 50 || ReadH3LossStats().ShieldedPeers-before.ShieldedPeers < 2) {
				n += exchange(t, sts, 500*time.Millisecond)
			}
			dups := relay.dups.Load()
			stats := ReadH3LossStats()
			t.Logf("%d exchanges; relay dropped %d datagrams and saw %d copies; shield counted %d copies, %d peers shielded",
				n, relay.dropped.Load(), dups, stats.DuplicatedPackets-before.DuplicatedPackets, stats.ShieldedPeers)
			if tc.wantDups {
				if dups < 50 {
					t.Fatalf("lossy path: %d copies seen in 15 s, want the shield on", dups)
				}
				if stats.DuplicatedPackets-before.DuplicatedPackets < dups {
					t.Fatalf("shield counted %d copies, relay saw %d", stats.DuplicatedPackets-before.DuplicatedPackets, dups)
				}
				if stats.ShieldedPeers-before.ShieldedPeers < 2 {
					t.Fatalf("%d peers shielded, want client and server", stats.ShieldedPeers-before.ShieldedPeers)
				}
			} else if dups != 0 || stats.DuplicatedPackets != before.DuplicatedPackets {
				t.Fatalf("shield off: %d copies seen, %d counted", dups, stats.DuplicatedPackets-before.DuplicatedPackets)
			}
			for _, st := range sts {
				st.Close()
			}
			e.client.Close()
			e.server.Close()
			wait.Until(t, 5*time.Second, "shields taken down when the connections end", func() error {
				if n := ReadH3LossStats().ShieldedPeers; n != before.ShieldedPeers {
					return fmt.Errorf("%d peers shielded, %d before", n, before.ShieldedPeers)
				}
				return nil
			})
		})
	}
}

// TestTailPacket: which datagrams the shield repeats, with quic-go's control messages.
func TestTailPacket(t *testing.T) {
	gso := func(size uint16) []byte {
		b := make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], size)
		return b
	}
	ecn := func() []byte {
		b := make([]byte, unix.CmsgSpace(4))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
		h.SetLen(unix.CmsgLen(4))
		return b
	}
	short := func(n int) []byte { b := make([]byte, n); b[0] = 0x40; return b }
	long := func(n int) []byte { b := make([]byte, n); b[0] = 0xc0; return b }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name    string
		b, oob  []byte
		wantLen int // 0: not repeated
	}{
		{"small alone", short(300), nil, 300},
		{"small alone, ECN", short(300), ecn(), 300},
		{"full alone", short(1252), nil, 0},
		{"handshake", long(300), nil, 0},
		{"one segment, partial", short(300), gso(1252), 300},
		{"one segment, full", short(1252), gso(1252), 0},
		{"batch, partial tail", cat(short(1252), short(1252), short(77)), cat(ecn(), gso(1252)), 77},
		{"batch, full tail", cat(short(1252), short(1252)), gso(1252), 0},
		{"batch, long-header tail", cat(short(1252), long(77)), gso(1252), 0},
		{"truncated control message", short(300), gso(1252)[:unix.SizeofCmsghdr-1], 300},
		{"control message longer than its buffer", short(300), gso(1252)[:unix.CmsgLen(1)], 300},
		{"control message length below its header", short(300), func() []byte { b := gso(1252); b[0] = 4; return b }(), 300},
		{"empty", nil, gso(1252), 0},
		{"batch of four, partial tail", cat(short(1252), short(1252), short(1252), short(5)), gso(1252), 5},
	} {
		p := tailPacket(tc.b, tc.oob)
		if len(p) != tc.wantLen {
			t.Errorf("%s: repeats %d bytes, want %d", tc.name, len(p), tc.wantLen)
		}
		if len(p) > 0 && &p[len(p)-1] != &tc.b[len(tc.b)-1] {
			t.Errorf("%s: repeated bytes are not the datagram's end", tc.name)
		}
	}
}
