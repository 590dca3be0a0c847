// Package netem impairs a link the way tc's netem qdisc does — random loss, a delay and a
// jitter on every packet — for kernels built without sch_netem, the lab's among them. Packets
// are handed to user space through NFQUEUE (an iptables rule in the mangle table's FORWARD
// chain, for the traffic a bridge forwards between its ports) and given back after their
// delay, or dropped. Only what the rule matches is touched; the rule lets packets through
// untouched if the process stops reading (--queue-bypass), and Close removes it.
//
// It is a test tool: one goroutine and one timer per packet in flight, fine for the lab's
// request rates (thousands of packets per second), not for line rate.
package netem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Config is the impairment: each packet is dropped with probability Loss, and the others are
// delivered Delay ± Jitter later (uniformly spread, so packets may be reordered, as with
// netem's jitter).
type Config struct {
	Loss          float64
	Delay, Jitter time.Duration
	// Queue is the NFQUEUE number; any free one (0–65535).
	Queue uint16
}

// Stats counts what the impairment did.
type Stats struct {
	Seen, Dropped int64
}

// Link is an impairment in place.
type Link struct {
	cfg    Config
	rule   []string
	sock   int
	mu     sync.Mutex // serializes verdicts on sock
	seen   atomic.Int64
	drop   atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
	timers sync.WaitGroup
	closed atomic.Bool
}

// OnBridge impairs every IPv4 packet the bridge forwards between two of its ports (the
// kernel's bridge netfilter hooks must be on: net.bridge.bridge-nf-call-iptables=1).
func OnBridge(bridge string, cfg Config) (*Link, error) {
	if cfg.Loss < 0 || cfg.Loss >= 1 || cfg.Delay < 0 || cfg.Jitter < 0 || cfg.Jitter > cfg.Delay {
		return nil, fmt.Errorf("netem: loss must be in [0, 1) and 0 ≤ jitter ≤ delay (got %v, %v, %v)", cfg.Loss, cfg.Delay, cfg.Jitter)
	}
	if bridge == "" {
		return nil, errors.New("netem: no bridge")
	}
	sock, err := openQueue(cfg.Queue)
	if err != nil {
		return nil, err
	}
	l := &Link{cfg: cfg, sock: sock, done: make(chan struct{}),
		rule: []string{"-t", "mangle", "FORWARD", "-i", bridge, "-o", bridge, "-p", "all",
			"-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(cfg.Queue)), "--queue-bypass"}}
	if out, err := iptables("-I", l.rule...); err != nil {
		unix.Close(sock)
		return nil, fmt.Errorf("netem: iptables: %v: %s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go l.run(ctx)
	return l, nil
}

func iptables(op string, rule ...string) ([]byte, error) {
	// rule is "-t mangle CHAIN match…": the operation goes between the table and the chain
	args := append([]string{"-w", rule[0], rule[1], op}, rule[2:]...)
	return exec.Command("iptables", args...).CombinedOutput()
}

// Stats returns the counts so far.
func (l *Link) Stats() Stats { return Stats{Seen: l.seen.Load(), Dropped: l.drop.Load()} }

// Close removes the rule first (new packets flow untouched), then delivers what is held and
// closes the queue.
func (l *Link) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	out, err := iptables("-D", l.rule...)
	l.cancel()
	<-l.done
	l.timers.Wait()
	l.mu.Lock()
	unix.Close(l.sock)
	l.sock = -1
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("netem: remove the iptables rule: %v: %s", err, out)
	}
	return nil
}

func (l *Link) run(ctx context.Context) {
	defer close(l.done)
	buf := make([]byte, 1<<16)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(l.sock, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) {
				continue
			}
			return
		}
		for _, id := range packetIDs(buf[:n]) {
			l.handle(id)
		}
	}
}

func (l *Link) handle(id uint32) {
	l.seen.Add(1)
	if rand.Float64() < l.cfg.Loss {
		l.drop.Add(1)
		l.verdict(id, nfDrop)
		return
	}
	d := l.cfg.Delay
	if l.cfg.Jitter > 0 {
		d += time.Duration(rand.Int64N(int64(2*l.cfg.Jitter)+1)) - l.cfg.Jitter
	}
	if d <= 0 {
		l.verdict(id, nfAccept)
		return
	}
	l.timers.Add(1)
	time.AfterFunc(d, func() {
		defer l.timers.Done()
		l.verdict(id, nfAccept)
	})
}

func (l *Link) verdict(id, v uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sock < 0 {
		return
	}
	_ = sendVerdict(l.sock, l.cfg.Queue, id, v)
}

// ---- nfnetlink_queue, as include/uapi/linux/netfilter/nfnetlink_queue.h defines it

const (
	nfnlSubsysQueue = 3
	msgPacket       = 0
	msgVerdict      = 1
	msgConfig       = 2

	attrCfgCmd      = 1
	attrCfgParams   = 2
	attrCfgMaxLen   = 3
	attrPacketHdr   = 1
	attrVerdictHdr  = 2
	cmdBind         = 1
	copyMeta        = 1
	nfDrop          = 0
	nfAccept        = 1
	nlmsgHdrLen     = 16
	nfgenHdrLen     = 4
	queueMaxPackets = 1 << 16
)

func openQueue(queue uint16) (int, error) {
	sock, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("netem: netlink socket: %w", err)
	}
	_ = unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	_ = unix.SetsockoptInt(sock, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	// a receive timeout, so that run notices Close
	_ = unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200_000})
	if err := unix.Bind(sock, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(sock)
		return -1, fmt.Errorf("netem: bind netlink: %w", err)
	}
	bind := attr(attrCfgCmd, []byte{cmdBind, 0, 0, unix.AF_INET})
	params := attr(attrCfgParams, append(binary.BigEndian.AppendUint32(nil, 0xffff), copyMeta))
	maxLen := attr(attrCfgMaxLen, binary.BigEndian.AppendUint32(nil, queueMaxPackets))
	for _, a := range [][]byte{bind, append(params, maxLen...)} {
		if err := request(sock, msgConfig, unix.AF_UNSPEC, queue, a); err != nil {
			unix.Close(sock)
			return -1, fmt.Errorf("netem: configure NFQUEUE %d: %w", queue, err)
		}
	}
	return sock, nil
}

// attr is one netlink attribute, padded to four bytes.
func attr(typ uint16, payload []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func message(typ uint16, flags uint16, family uint8, queue uint16, attrs []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(nlmsgHdrLen+nfgenHdrLen+len(attrs)))
	b = binary.NativeEndian.AppendUint16(b, nfnlSubsysQueue<<8|typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, 0) // seq
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel
	b = append(b, family, 0)                   // nfgenmsg: family, version 0
	b = binary.BigEndian.AppendUint16(b, queue)
	return append(b, attrs...)
}

// request sends a configuration message and waits for the kernel's acknowledgement.
func request(sock int, typ uint16, family uint8, queue uint16, attrs []byte) error {
	if err := unix.Sendto(sock, message(typ, unix.NLM_F_REQUEST|unix.NLM_F_ACK, family, queue, attrs), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(sock, buf, 0)
	if err != nil {
		return err
	}
	if n < nlmsgHdrLen+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("unexpected answer (%d bytes)", n)
	}
	if code := int32(binary.NativeEndian.Uint32(buf[nlmsgHdrLen:])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}

func sendVerdict(sock int, queue uint16, id, verdict uint32) error {
	hdr := binary.BigEndian.AppendUint32(nil, verdict)
	hdr = binary.BigEndian.AppendUint32(hdr, id)
	return unix.Sendto(sock, message(msgVerdict, unix.NLM_F_REQUEST, unix.AF_UNSPEC, queue, attr(attrVerdictHdr, hdr)), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// packetIDs reads the packet ids of the NFQNL_MSG_PACKET messages in one datagram.
func packetIDs(b []byte) []uint32 {
	var ids []uint32
	for len(b) >= nlmsgHdrLen {
		n := int(binary.NativeEndian.Uint32(b))
		if n < nlmsgHdrLen || n > len(b) {
			break
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		if typ == nfnlSubsysQueue<<8|msgPacket && n >= nlmsgHdrLen+nfgenHdrLen {
			attrs := b[nlmsgHdrLen+nfgenHdrLen : n]
			for len(attrs) >= 4 {
				al := int(binary.NativeEndian.Uint16(attrs))
				at := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
				if al < 4 || al > len(attrs) {
					break
				}
				if at == attrPacketHdr && al >= 8 {
					ids = append(ids, binary.BigEndian.Uint32(attrs[4:]))
				}
				al = (al + 3) &^ 3
				if al > len(attrs) {
					break
				}
				attrs = attrs[al:]
			}
		}
		b = b[(n+3)&^3:]
	}
	return ids
}
