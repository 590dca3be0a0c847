package hbone

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// What BenchmarkLossyLink logs besides latencies, so that a result can be explained: what
// the emulated link carried and dropped (per direction and IP protocol, with a histogram of
// packet sizes), how late it delivered, the kernel's TCP and UDP counters and `ss -ti` of
// the HTTP/2 connection, and quic-go's congestion window, losses and PTOs from its qlog
// events.

// sizeBuckets are the upper bounds of the packet-size histogram (IP packet bytes).
var sizeBuckets = []int{64, 128, 256, 576, 1024, 1280, 1500}

type protoStats struct {
	Pkts, Drops, Bytes, Max int
	Hist                    [8]int // len(sizeBuckets)+1: the last counts packets over 1500
}

type dirStats struct {
	Proto    map[uint8]*protoStats // by IP protocol number
	MaxLate  time.Duration         // how far behind its due time a packet was delivered
	Late1ms  int                   // packets delivered more than 1 ms late
	Late10ms int                   // and more than 10 ms
	MaxQueue int                   // packets waiting for their due time at once
	MaxWake  time.Duration         // the latest wake-up from a sleep until a packet's due time
	MaxWrite time.Duration         // the longest write of a packet into the TUN device
}

// linkStats counts what the emulated link carried, per direction (0: client to server).
type linkStats struct {
	mu   sync.Mutex
	dirs [2]dirStats
}

func (l *linkStats) read(dir int, pkt []byte, dropped bool, queued int) {
	proto := uint8(0)
	if len(pkt) >= 20 && pkt[0]>>4 == 4 {
		proto = pkt[9]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := &l.dirs[dir]
	if d.Proto == nil {
		d.Proto = map[uint8]*protoStats{}
	}
	p := d.Proto[proto]
	if p == nil {
		p = &protoStats{}
		d.Proto[proto] = p
	}
	p.Pkts++
	p.Bytes += len(pkt)
	p.Max = max(p.Max, len(pkt))
	i, _ := slices.BinarySearch(sizeBuckets, len(pkt))
	p.Hist[i]++
	if dropped {
		p.Drops++
	}
	d.MaxQueue = max(d.MaxQueue, queued)
}

func (l *linkStats) delivered(dir int, late, wake, write time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := &l.dirs[dir]
	d.MaxWake = max(d.MaxWake, wake)
	d.MaxWrite = max(d.MaxWrite, write)
	d.MaxLate = max(d.MaxLate, late)
	if late > time.Millisecond {
		d.Late1ms++
	}
	if late > 10*time.Millisecond {
		d.Late10ms++
	}
}

// take returns the counts and starts new ones.
func (l *linkStats) take() [2]dirStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.dirs
	l.dirs = [2]dirStats{}
	return d
}

// linkReporter fetches the link's counts, from the helper process (in, out) or from
// this one (local).
type linkReporter struct {
	local *linkStats
	in    io.Writer
	out   *bufio.Reader
}

// report logs the counts since the last report.
func (r *linkReporter) report(b *testing.B, phase string) {
	var dirs [2]dirStats
	if r.local != nil {
		dirs = r.local.take()
	} else {
		if _, err := io.WriteString(r.in, "\n"); err != nil {
			b.Fatalf("link helper: %v", err)
		}
		line, err := r.out.ReadBytes('\n')
		if err != nil {
			b.Fatalf("link helper: %v", err)
		}
		if err := json.Unmarshal(line, &dirs); err != nil {
			b.Fatalf("link helper said %q: %v", line, err)
		}
	}
	names := map[uint8]string{6: "tcp", 17: "udp"}
	for dir, d := range dirs {
		arrow := "cli→srv"
		if dir == 1 {
			arrow = "srv→cli"
		}
		for _, proto := range slices.Sorted(maps.Keys(d.Proto)) {
			p := d.Proto[proto]
			name := names[proto]
			if name == "" {
				name = "proto " + strconv.Itoa(int(proto))
			}
			var h strings.Builder
			for i, n := range p.Hist {
				if n == 0 {
					continue
				}
				if i < len(sizeBuckets) {
					fmt.Fprintf(&h, " ≤%d:%d", sizeBuckets[i], n)
				} else {
					fmt.Fprintf(&h, " >1500:%d", n)
				}
			}
			b.Logf("link %s %s %s: %d packets, %d dropped (%.2f%%), %d B, max %d B; sizes%s",
				phase, arrow, name, p.Pkts, p.Drops, 100*float64(p.Drops)/float64(max(p.Pkts, 1)), p.Bytes, p.Max, h.String())
		}
		b.Logf("link %s %s: delivered up to %v after due (%d packets >1ms, %d >10ms; woke up to %v late, wrote in up to %v), up to %d packets queued",
			phase, arrow, d.MaxLate.Round(10*time.Microsecond), d.Late1ms, d.Late10ms, d.MaxWake.Round(10*time.Microsecond), d.MaxWrite.Round(10*time.Microsecond), d.MaxQueue)
	}
}

// nsCounters reads the kernel's SNMP counters (/proc/net/snmp and netstat) of a namespace.
func nsCounters(ns *netns) map[string]int64 {
	out := map[string]int64{}
	_ = ns.do(func() error {
		for _, f := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			data, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			for i := 0; i+1 < len(lines); i += 2 {
				keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				for j := 1; j < len(keys) && j < len(vals); j++ {
					v, _ := strconv.ParseInt(vals[j], 10, 64)
					out[strings.TrimSuffix(keys[0], ":")+"."+keys[j]] = v
				}
			}
		}
		return nil
	})
	return out
}

// counterKeys are the kernel counters worth reading after a lossy run.
var counterKeys = []string{
	"Tcp.OutSegs", "Tcp.RetransSegs", "TcpExt.TCPFastRetrans", "TcpExt.TCPSackRecovery",
	"TcpExt.TCPLossProbes", "TcpExt.TCPLossProbeRecovery", "TcpExt.TCPTimeouts",
	"TcpExt.TCPSpuriousRTOs", "TcpExt.TCPDSACKRecv", "TcpExt.TCPDSACKUndo", "TcpExt.TCPLostRetransmit",
	"TcpExt.TCPOFOQueue", "TcpExt.TCPBacklogDrop", "TcpExt.TCPRcvQDrop",
	"Udp.OutDatagrams", "Udp.InDatagrams", "Udp.RcvbufErrors", "Udp.SndbufErrors", "Udp.InErrors",
}

func reportCounters(b *testing.B, phase, side string, before, after map[string]int64) {
	var s strings.Builder
	for _, k := range counterKeys {
		if d := after[k] - before[k]; d != 0 {
			fmt.Fprintf(&s, " %s=%d", k, d)
		}
	}
	b.Logf("kernel %s %s:%s", phase, side, s.String())
}

// ssSampler samples `ss -ti` of the HBONE TCP connection in a namespace.
type ssSampler struct {
	ns    *netns
	cc    string
	cwnd  []int
	rto   []int
	last  string
	ticks int
}

func (s *ssSampler) sample() {
	out, err := exec.Command("ip", "netns", "exec", s.ns.name, "ss", "-tinH", "state", "established",
		"( sport = :15008 or dport = :15008 )").Output()
	if err != nil {
		return
	}
	s.ticks++
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, "cwnd:") {
			continue
		}
		s.last = strings.TrimSpace(line)
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, ":")
			switch {
			case !ok && (f == "bbr" || f == "cubic" || f == "reno"):
				s.cc = f
			case k == "cwnd":
				n, _ := strconv.Atoi(v)
				s.cwnd = append(s.cwnd, n)
			case k == "rto":
				n, _ := strconv.ParseFloat(v, 64)
				s.rto = append(s.rto, int(n))
			}
		}
	}
}

// sampleSS samples both namespaces every interval until ctx ends, then logs a summary.
func sampleSS(ctx context.Context, b *testing.B, phase string, every time.Duration, nss ...*netns) (done func()) {
	samplers := make([]*ssSampler, len(nss))
	for i, ns := range nss {
		samplers[i] = &ssSampler{ns: ns}
	}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, s := range samplers {
					s.sample()
				}
			}
		}
	})
	return func() {
		for _, s := range samplers {
			s.sample() // the last word, with the final retransmission counts
		}
		cancel()
		wg.Wait()
		for i, s := range samplers {
			side := "client"
			if i == 1 {
				side = "server"
			}
			b.Logf("ss %s %s: cc=%s, %d samples, cwnd p10/p50/p90 %d/%d/%d packets, rto max %d ms; last: %s",
				phase, side, s.cc, len(s.cwnd), pctInt(s.cwnd, .1), pctInt(s.cwnd, .5), pctInt(s.cwnd, .9), slices.Max(append(s.rto, 0)), s.last)
		}
	}
}

func pctInt(v []int, p float64) int {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[int(float64(len(v)-1)*p)]
}

// qlogStats gathers quic-go's recovery events of every connection, per perspective.
type qlogStats struct {
	mu    sync.Mutex
	sides map[bool]*qlogSide // by isClient
	dir   string             // QLOGDIR: also write full qlog files there
}

type qlogSide struct {
	sent, ackOnly, tinyStream, tinyAlone, streamPkts int
	blocked                                          int // DATA_BLOCKED and STREAM_DATA_BLOCKED frames: flow control held us
	lost                                             map[qlog.PacketLossReason]int
	spurious, ptos, recoveries                       int
	cwnd                                             []int
	srtt, minRTT                                     time.Duration
}

func (q *qlogStats) tracer(ctx context.Context, isClient bool, id quic.ConnectionID) qlogwriter.Trace {
	var file qlogwriter.Trace
	if q.dir != "" {
		file = qlog.DefaultConnectionTracer(ctx, isClient, id)
	}
	return &qlogTrace{q: q, client: isClient, file: file}
}

type qlogTrace struct {
	q      *qlogStats
	client bool
	file   qlogwriter.Trace
}

func (t *qlogTrace) AddProducer() qlogwriter.Recorder {
	r := &qlogRecorder{t: t}
	if t.file != nil {
		r.file = t.file.AddProducer()
	}
	return r
}

type qlogRecorder struct {
	t    *qlogTrace
	file qlogwriter.Recorder
}

func (r *qlogRecorder) Close() error {
	if r.file != nil {
		return r.file.Close()
	}
	return nil
}

func (r *qlogRecorder) RecordEvent(ev qlogwriter.Event) {
	if r.file != nil {
		r.file.RecordEvent(ev)
	}
	q := r.t.q
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.side(r.t.client)
	switch e := ev.(type) {
	case qlog.PacketSent:
		s.sent++
		ackOnly, stream, streamBytes := true, false, int64(0)
		for _, f := range e.Frames {
			switch sf := f.Frame.(type) {
			case *qlog.AckFrame:
			case *qlog.StreamFrame:
				ackOnly, stream = false, true
				streamBytes += sf.Length
			case *qlog.DataBlockedFrame, *qlog.StreamDataBlockedFrame:
				ackOnly = false
				s.blocked++
			default:
				ackOnly = false
			}
		}
		if ackOnly {
			s.ackOnly++
		}
		if stream {
			s.streamPkts++
			if streamBytes <= 8 {
				s.tinyStream++
				if e.Raw.Length < 100 {
					s.tinyAlone++
				}
			}
		}
	case qlog.PacketLost:
		s.lost[e.Trigger]++
	case qlog.SpuriousLoss:
		s.spurious++
	case qlog.PTOCountUpdated:
		if e.PTOCount > 0 {
			s.ptos++
		}
	case qlog.CongestionStateUpdated:
		if e.State == qlog.CongestionStateRecovery {
			s.recoveries++
		}
	case qlog.MetricsUpdated:
		if e.CongestionWindow > 0 {
			s.cwnd = append(s.cwnd, e.CongestionWindow)
		}
		if e.SmoothedRTT > 0 {
			s.srtt = e.SmoothedRTT
		}
		if e.MinRTT > 0 {
			s.minRTT = e.MinRTT
		}
	}
}

// side returns a perspective's counts; q.mu is held.
func (q *qlogStats) side(client bool) *qlogSide {
	if q.sides == nil {
		q.sides = map[bool]*qlogSide{}
	}
	if q.sides[client] == nil {
		q.sides[client] = &qlogSide{lost: map[qlog.PacketLossReason]int{}}
	}
	return q.sides[client]
}

func (q *qlogStats) report(b *testing.B) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, client := range []bool{true, false} {
		s := q.sides[client]
		if s == nil {
			continue
		}
		side := "server"
		if client {
			side = "client"
		}
		b.Logf("qlog %s: %d packets sent (%d ACK-only, %d with STREAM data of which %d carry ≤8 B, %d of them in packets <100 B), %d flow-control BLOCKED frames, lost %v, %d spurious, %d PTOs, %d recovery periods; cwnd p10/p50/p90 %d/%d/%d B; srtt %v, min_rtt %v",
			side, s.sent, s.ackOnly, s.streamPkts, s.tinyStream, s.tinyAlone, s.blocked, s.lost, s.spurious, s.ptos, s.recoveries,
			pctInt(s.cwnd, .1), pctInt(s.cwnd, .5), pctInt(s.cwnd, .9), s.srtt.Round(100*time.Microsecond), s.minRTT.Round(100*time.Microsecond))
	}
	q.sides = nil
}

// tunInfo is `ip -s -d link show tun0` and `tc -s qdisc show dev tun0` of a namespace,
// compressed to one line: the device's MTU, GSO/GRO limits, drops and its qdisc.
func tunInfo(ns *netns) string {
	var buf bytes.Buffer
	for _, args := range [][]string{
		{"ip", "-n", ns.name, "-s", "-d", "link", "show", "tun0"},
		{"tc", "-n", ns.name, "-s", "qdisc", "show", "dev", "tun0"},
	} {
		out, _ := exec.Command(args[0], args[1:]...).CombinedOutput()
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			buf.WriteString(strings.Join(strings.Fields(sc.Text()), " "))
			buf.WriteString(" | ")
		}
	}
	return buf.String()
}
