package hbone

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"
)

// BenchmarkLossyLink is the case for HTTP/3: two network namespaces joined by a link
// that delays and drops packets, and 16 concurrent request/response streams over ONE pooled tunnel. Over
// HTTP/2 one lost TCP segment stalls every stream of the connection until it is
// retransmitted (head-of-line blocking); over HTTP/3 only the streams whose data was in the
// lost packet wait. It reports per-request latency percentiles for both protocols from the
// same run. Root only; run it with -benchtime 1x (each protocol does a fixed number of
// requests):
//
//	go test -run XXX -bench LossyLink -benchtime 1x ./mesh/hbone/
//
// HBONE_LINK (default "10ms,1") is the one-way delay and loss percentage of each
// direction: 20 ms round trip, 1% loss each way.
func BenchmarkLossyLink(b *testing.B) {
	netem := envOr("HBONE_LINK", "10ms,1")
	const streams, perStream = 16, 300
	size := 1024
	if v := os.Getenv("HBONE_REQ_SIZE"); v != "" {
		_, _ = fmt.Sscan(v, &size)
	}
	cli, srv := lossyLink(b, netem)

	ca := newTestCA(b, "cluster.local")
	cid, sid := ca.id("default", "client"), ca.id("default", "server")
	ccert, scert := ca.issue(b, cid, 0), ca.issue(b, sid, 0)
	srvAddr := netip.MustParseAddrPort("10.77.0.2:15008")
	echoAddr := netip.MustParseAddrPort("10.77.0.2:9000")

	var echoLn, tcpLn net.Listener
	var udp net.PacketConn
	must(b, srv.do(func() (err error) {
		if echoLn, err = net.Listen("tcp", echoAddr.String()); err != nil {
			return err
		}
		if tcpLn, err = net.Listen("tcp", srvAddr.String()); err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(srvAddr))
		return err
	}))
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	b.Cleanup(func() { echoLn.Close() })
	dialIn := func(ns *netns) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.do(func() error { var d net.Dialer; c, err = d.DialContext(ctx, network, addr); return err })
			return c, err
		}
	}
	server, err := NewServer(ServerConfig{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return scert, nil },
		Bundle:         ca.ca.Bundle(),
		Handler: HandlerFunc(func(ctx context.Context, r *Request) {
			_ = Forward(ctx, r, func(ctx context.Context, dst netip.AddrPort) (HalfCloser, error) {
				c, err := dialIn(srv)(ctx, "tcp", dst.String())
				if err != nil {
					return nil, err
				}
				return c.(*net.TCPConn), nil
			})
		}),
	})
	must(b, err)
	go server.Serve(tcpLn)
	go server.ServeH3(udp)
	b.Cleanup(func() { server.Close() })

	results := map[Protocol][]time.Duration{}
	for _, proto := range []Protocol{ProtocolH2, ProtocolH3} {
		client, err := NewClient(ClientConfig{
			ConnConfig:  ConnConfig{H3HandshakeTimeout: 5 * time.Second},
			Certificate: func(context.Context, spiffeid.ID) (*tls.Certificate, error) { return ccert, nil },
			Bundle:      ca.ca.Bundle(),
			DialContext: dialIn(cli),
			ListenPacket: func(_ context.Context, network, _ string) (pc net.PacketConn, err error) {
				err = cli.do(func() error { pc, err = net.ListenUDP(network, nil); return err })
				return pc, err
			},
		})
		must(b, err)
		tgt := Target{Source: cid, Address: srvAddr, Identities: []spiffeid.ID{sid}, Authority: echoAddr, Protocol: proto}
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			lat []time.Duration
		)
		sts := make([]*Stream, streams)
		for i := range sts {
			st, err := client.Dial(context.Background(), tgt)
			must(b, err)
			if st.Protocol() != proto {
				b.Fatalf("stream on %s, want %s", st.Protocol(), proto)
			}
			sts[i] = st
		}
		if n := client.Conns(); n != 1 {
			b.Fatalf("%d pooled connections, want 1", n)
		}
		b.ResetTimer()
		for _, st := range sts {
			wg.Go(func() {
				defer st.Close()
				req, resp := make([]byte, size), make([]byte, size)
				mine := make([]time.Duration, 0, perStream)
				for range perStream {
					t0 := time.Now()
					if _, err := st.Write(req); err != nil {
						b.Error(err)
						return
					}
					if _, err := io.ReadFull(st, resp); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		b.StopTimer()
		client.Close()
		slices.Sort(lat)
		results[proto] = lat
	}
	pct := func(l []time.Duration, p float64) time.Duration { return l[int(float64(len(l)-1)*p)] }
	for _, proto := range []Protocol{ProtocolH2, ProtocolH3} {
		l := results[proto]
		b.Logf("%-8s n=%d p50=%v p90=%v p99=%v p99.9=%v max=%v", proto, len(l), pct(l, .5), pct(l, .9), pct(l, .99), pct(l, .999), l[len(l)-1])
	}
	h2, h3 := pct(results[ProtocolH2], .99), pct(results[ProtocolH3], .99)
	b.ReportMetric(float64(h2.Microseconds())/1000, "h2-p99-ms")
	b.ReportMetric(float64(h3.Microseconds())/1000, "h3-p99-ms")
	b.ReportMetric(float64(h3)/float64(h2), "h3/h2-p99")
	b.Logf("link %q (one-way delay, loss %% per direction); %d streams × %d requests of %d B over one pooled tunnel; p99 HTTP/3 / HTTP/2 = %.2f",
		netem, streams, perStream, size, float64(h3)/float64(h2))
}

// lossyLink joins two fresh network namespaces with a point-to-point link emulated in
// user space: a TUN device in each, and between them this process, which delays every
// packet and drops a share of them at random, each direction on its own. (The lab's kernel
// has no sch_netem; see docs/benchmarks.md.) spec is "<one-way delay>,<loss %>".
func lossyLink(b *testing.B, spec string) (cli, srv *netns) {
	d, l, _ := strings.Cut(spec, ",")
	delay, err := time.ParseDuration(strings.TrimSpace(d))
	must(b, err)
	var loss float64
	_, err = fmt.Sscanf(strings.TrimSpace(l), "%g", &loss)
	must(b, err)
	cli, srv = newNetns(b), newNetns(b)
	open := func(ns *netns, local, peer string) *os.File {
		var f *os.File
		must(b, ns.do(func() error {
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
			if err != nil {
				return err
			}
			ifr, err := unix.NewIfreq("tun0")
			if err != nil {
				return err
			}
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
				unix.Close(fd)
				return err
			}
			f = os.NewFile(uintptr(fd), "tun0")
			return nil
		}))
		run(b, "ip", "-n", ns.name, "addr", "add", local, "peer", peer, "dev", "tun0")
		run(b, "ip", "-n", ns.name, "link", "set", "tun0", "up")
		return f
	}
	a := open(cli, "10.77.0.1", "10.77.0.2")
	z := open(srv, "10.77.0.2", "10.77.0.1")
	var wg sync.WaitGroup
	b.Cleanup(func() { a.Close(); z.Close(); wg.Wait() })
	forward := func(from, to *os.File) {
		type pkt struct {
			due time.Time
			b   []byte
		}
		q := make(chan pkt, 1<<16)
		wg.Go(func() {
			defer close(q)
			for {
				buf := make([]byte, 65536)
				n, err := from.Read(buf)
				if err != nil {
					return
				}
				if rand.Float64()*100 < loss {
					continue
				}
				q <- pkt{due: time.Now().Add(delay), b: buf[:n]}
			}
		})
		wg.Go(func() {
			for p := range q {
				time.Sleep(time.Until(p.due))
				_, _ = to.Write(p.b)
			}
		})
	}
	forward(a, z)
	forward(z, a)
	return cli, srv
}

func must(b testing.TB, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
