package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The benchmarks compare three paths to the same TCP server on loopback:
//
//	direct: client → server
//	mtls:   client → proxy A → TLS 1.3 (mutual, SPIFFE-verified) → proxy B → server
//	hbone:  client → proxy A → HBONE (our Client and Server)      → proxy B → server
//	hbone-h3: the same over HTTP/3 (QUIC on UDP) instead of HTTP/2 on TCP
//
// mtls is the floor a tunnelling proxy can reach with Go's TLS; hbone's cost over it is
// what HTTP/2 framing, streams and flow control add.

// benchPath starts the proxies for mode in front of dst and returns the address the
// client connects to.
func benchPath(b *testing.B, mode string, dst netip.AddrPort) netip.AddrPort {
	b.Helper()
	switch mode {
	case "direct":
		return dst
	case "mtls":
		return startMTLSPath(b, dst)
	case "hbone", "hbone-h3":
		var opts []envOption
		if mode == "hbone-h3" {
			opts = append(opts, withProto(ProtocolH3))
		}
		e := newEnv(b, opts...)
		return startTCP(b, func(c *net.TCPConn) {
			tgt := e.target()
			tgt.Authority = dst
			st, err := e.client.Dial(context.Background(), tgt)
			if err != nil {
				b.Error(err)
				return
			}
			Splice(c, st)
		})
	}
	b.Fatalf("unknown mode %q", mode)
	return netip.AddrPort{}
}

// startMTLSPath is the raw TLS tunnel: a plaintext front proxy that wraps each connection
// in TLS 1.3 to a back proxy, which unwraps it towards dst. Certificates and verification
// are the same SVIDs and checks HBONE uses.
func startMTLSPath(b *testing.B, dst netip.AddrPort) netip.AddrPort {
	ca := newTestCA(b, "cluster.local")
	cid, sid := ca.id("default", "client"), ca.id("default", "server")
	ccert, scert := ca.issue(b, cid, 0), ca.issue(b, sid, 0)
	stls := serverTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return scert, nil }, ca.ca.Bundle())
	stls.NextProtos = nil
	back := startTCP(b, func(c *net.TCPConn) {
		tc := tls.Server(c, stls)
		if err := tc.Handshake(); err != nil {
			return
		}
		up, err := net.Dial("tcp", dst.String())
		if err != nil {
			return
		}
		Splice(tc, up.(*net.TCPConn))
	})
	ctls := clientTLS(ccert, ca.ca.Bundle(), []spiffeid.ID{sid})
	ctls.NextProtos = nil
	return startTCP(b, func(c *net.TCPConn) {
		raw, err := net.Dial("tcp", back.String())
		if err != nil {
			return
		}
		tc := tls.Client(raw, ctls)
		if err := tc.Handshake(); err != nil {
			return
		}
		Splice(c, tc)
	})
}

// BenchmarkRoundTrip sends a 1 KB request and reads a 1 KB response per op, on one
// connection.
func BenchmarkRoundTrip(b *testing.B) {
	for _, mode := range []string{"direct", "mtls", "hbone", "hbone-h3"} {
		b.Run(mode, func(b *testing.B) {
			echo := startEcho(b)
			c, err := net.Dial("tcp", benchPath(b, mode, echo).String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req, resp := make([]byte, 1024), make([]byte, 1024)
			// Warm the path (handshakes, pools) outside the timer.
			for range 10 {
				c.Write(req)
				io.ReadFull(c, resp)
			}
			b.ReportAllocs()
			cpu0 := processCPU(b)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// The process's CPU time, both proxies, the client and the echo alike: what a
			// round trip costs besides how long it takes.
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// BenchmarkThroughput pushes bulk data one way over one connection; MB/s is the figure.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 64 << 10
	for _, mode := range []string{"direct", "mtls", "hbone", "hbone-h3"} {
		b.Run(mode, func(b *testing.B) {
			sink := startTCP(b, func(c *net.TCPConn) {
				io.Copy(io.Discard, c)
				c.CloseWrite()
			})
			c, err := net.Dial("tcp", benchPath(b, mode, sink).String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, chunk)
			c.Write(buf)
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			// Count the time until the last byte has arrived, not just been buffered.
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
		})
	}
}

// processCPU is the CPU time (user and system) the process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
