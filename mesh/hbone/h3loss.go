package hbone

import (
	"encoding/binary"
	"maps"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// The loss shield: on a path that loses packets, an HTTP/3 connection sends each short
// QUIC packet twice.
//
// Over HTTP/3 a lost packet stalls only the streams it carried, but it still stalls them:
// the sender learns of the loss from the ACK of a later packet (a round trip at best) and
// retransmits (half a round trip more). For request/response traffic, where an exchange is
// one packet each way, 1 % random loss makes about 2 % of exchanges pay that, so the p99
// exchange is a recovered one whatever the transport (docs/benchmarks.md, issue 14). A
// second copy of the packet, sent right behind the first, makes a loss of the exchange's
// packet need both copies lost: 1 in 10,000 at 1 % loss.
//
// Only what is cheap to repeat is repeated: a datagram that is one short-header (1-RTT)
// packet smaller than a full one, or the last, partial segment of a GSO batch, which is
// where a message or a burst ends and a loss is slowest to detect. Full-size packets of a
// bulk transfer are sent once. QUIC receivers drop a packet number they have already seen
// (RFC 9000 §12.3), so the copy costs the receiver one decryption and the wire one packet.
// quic-go does not know of the copy: its congestion control counts the packet once.
//
// The shield is off until the connection itself measures loss. It compares quic-go's count
// of packets it declared lost with those it sent over windows of at least lossWindow that
// end once they hold lossMinLost/H3LossThreshold packets (600 at the default threshold), or
// after lossMaxWindow: at least lossMinLost losses, at a rate of at least
// ConnConfig.H3LossThreshold of at least lossMinSample packets, shield its peer's address for
// H3ShieldHold, renewed while the loss goes on. One loss, one reordering or one congestion
// mark does not. With the shield on, losses of small packets mostly go unseen, so the hold
// ends even if the path is still lossy, and the next window measures it afresh.
const (
	lossWindow    = time.Second
	lossMaxWindow = 10 * time.Second
	lossMinSample = 100
	lossMinLost   = 3
	// smallPacket bounds a datagram sent without GSO that may be copied: every full QUIC
	// packet is at least 1,200 bytes (RFC 9000 §14).
	smallPacket = 1200
)

var h3LossCounters struct {
	duplicated atomic.Uint64
	shielded   atomic.Int64
}

// H3LossStats are the process's loss-shield counters, for metrics.
type H3LossStats struct {
	// DuplicatedPackets counts the second copies sent.
	DuplicatedPackets uint64
	// ShieldedPeers is the number of HTTP/3 connections whose peer is shielded now (a
	// shield whose hold ran out is counted until its connection's next tick, a second).
	ShieldedPeers int64
}

// ReadH3LossStats returns the counters.
func ReadH3LossStats() H3LossStats {
	return H3LossStats{DuplicatedPackets: h3LossCounters.duplicated.Load(), ShieldedPeers: h3LossCounters.shielded.Load()}
}

// shieldConn is the UDP socket under a quic.Transport. It keeps everything quic-go uses on a
// *net.UDPConn (batched reads, GSO, ECN and packet-info control messages) and repeats the
// small packets it writes to a shielded peer.
type shieldConn struct {
	*net.UDPConn
	batch *ipv4.PacketConn

	// peers maps each shielded peer to the end of its hold. Every write reads it, so it is
	// copied on write (under mu, by the connections' loss watchers, once a second at most)
	// and read without a lock; an empty map means no write looks further.
	mu    sync.Mutex
	peers atomic.Pointer[map[netip.AddrPort]time.Time]
}

// shieldPacketConn returns the socket a quic.Transport should use over pc: pc's loss shield
// when pc is a UDP socket, with the shield; otherwise pc itself and no shield.
func shieldPacketConn(pc net.PacketConn) (net.PacketConn, *shieldConn) {
	u, ok := pc.(*net.UDPConn)
	if !ok {
		return pc, nil
	}
	s := &shieldConn{UDPConn: u, batch: ipv4.NewPacketConn(u)}
	s.peers.Store(&map[netip.AddrPort]time.Time{})
	return s, s
}

// ReadBatch is quic-go's batched receive (recvmmsg), straight on the socket.
func (s *shieldConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	return s.batch.ReadBatch(ms, flags)
}

// WriteMsgUDP writes one datagram (or a GSO batch, when oob says so) and, to a shielded
// peer, the copy of its last packet if that one is short.
func (s *shieldConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	n, oobn, err := s.UDPConn.WriteMsgUDP(b, oob, addr)
	if err != nil {
		return n, oobn, err
	}
	if peers := *s.peers.Load(); len(peers) == 0 {
		return n, oobn, err
	} else if _, ok := peers[unmap(addr.AddrPort())]; !ok {
		return n, oobn, err
	}
	if p := tailPacket(b, oob); p != nil {
		// A segment size larger than the datagram sends it whole (udp_send_skb).
		if _, _, err := s.UDPConn.WriteMsgUDP(p, oob, addr); err == nil {
			h3LossCounters.duplicated.Add(1)
		}
	}
	return n, oobn, err
}

// update replaces the peers map with a copy that f changed, and reports f's answer.
func (s *shieldConn) update(f func(m map[netip.AddrPort]time.Time) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := maps.Clone(*s.peers.Load())
	changed := f(m)
	s.peers.Store(&m)
	return changed
}

// shield shields peer until the given time and reports whether it was not shielded before.
func (s *shieldConn) shield(peer netip.AddrPort, until time.Time) bool {
	peer = unmap(peer)
	return s.update(func(m map[netip.AddrPort]time.Time) bool {
		_, had := m[peer]
		m[peer] = until
		if !had {
			h3LossCounters.shielded.Add(1)
		}
		return !had
	})
}

// unshield ends peer's shield; expiredOnly leaves one whose hold has not run out. It
// reports whether a shield ended. A hold that ran out is ended here, by the connection's
// watcher within a second, not by the writes.
func (s *shieldConn) unshield(peer netip.AddrPort, expiredOnly bool) bool {
	peer = unmap(peer)
	if _, had := (*s.peers.Load())[peer]; !had {
		return false
	}
	return s.update(func(m map[netip.AddrPort]time.Time) bool {
		until, had := m[peer]
		if !had || expiredOnly && time.Now().Before(until) {
			return false
		}
		delete(m, peer)
		h3LossCounters.shielded.Add(-1)
		return true
	})
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// tailPacket returns the last QUIC packet of a datagram or GSO batch when it is a short-
// header packet smaller than a full one, and nil otherwise.
func tailPacket(b, oob []byte) []byte {
	seg := gsoSegment(oob)
	p := b
	switch {
	case seg > 0:
		p = b[(len(b)-1)/seg*seg:]
		if len(p) == seg {
			return nil
		}
	case len(b) >= smallPacket:
		return nil
	}
	if len(p) == 0 || p[0]&0x80 != 0 { // long header: handshake packets are not repeated
		return nil
	}
	return p
}

// gsoSegment is the UDP_SEGMENT size among the control messages of oob, or 0.
func gsoSegment(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT && l >= unix.CmsgLen(2) {
			return int(binary.NativeEndian.Uint16(oob[unix.CmsgLen(0):]))
		}
		oob = oob[min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(oob)):]
	}
	return 0
}

// watchLoss runs the connection's side of the shield (see the top of this file) until the
// connection ends, and then takes its peer's shield down.
func (c *h3conn) watchLoss() {
	sh := c.shield
	peer := addrPortOf(c.qc.RemoteAddr())
	defer func() {
		if sh.unshield(peer, false) {
			c.log.Debug("loss shield off: connection ended")
		}
	}()
	// A window ends once it holds enough packets for the threshold to mean a few losses, or
	// after lossMaxWindow.
	enough := max(lossMinSample, uint64(math.Ceil(lossMinLost/c.cfg.H3LossThreshold)))
	t := time.NewTicker(lossWindow)
	defer t.Stop()
	start := c.qc.ConnectionStats()
	began := time.Now()
	for {
		select {
		case <-c.qc.Context().Done():
			return
		case <-t.C:
		}
		if sh.unshield(peer, true) {
			c.log.Info("loss shield off: its hold ran out without loss measured again", "hold", c.cfg.H3ShieldHold)
		}
		st := c.qc.ConnectionStats()
		if st.PacketsSent < start.PacketsSent || st.PacketsLost < start.PacketsLost || st.BytesLost < start.BytesLost {
			start, began = st, time.Now() // a counter went back: start over
			continue
		}
		sent, lost := st.PacketsSent-start.PacketsSent, st.PacketsLost-start.PacketsLost
		if sent < enough && time.Since(began) < lossMaxWindow {
			continue
		}
		lostBytes := st.BytesLost - start.BytesLost
		start, began = st, time.Now()
		// quic-go counts an ECN congestion mark as a loss of no bytes: a window needs lost
		// bytes as well.
		if sent >= lossMinSample && lost >= lossMinLost && lostBytes > 0 && float64(lost) >= c.cfg.H3LossThreshold*float64(sent) {
			if sh.shield(peer, time.Now().Add(c.cfg.H3ShieldHold)) {
				c.log.Info("lossy path: sending short QUIC packets twice", "lost", lost, "sent", sent, "hold", c.cfg.H3ShieldHold)
			}
		}
	}
}
