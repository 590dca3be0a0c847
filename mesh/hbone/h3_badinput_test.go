package hbone

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The HTTP/3 side's bad-input tests talk to a real server through a raw QUIC connection
// that writes whatever bytes the test chooses.

// rawH3 opens a QUIC connection to e's HTTP/3 listener with the client's SVID.
func rawH3(t *testing.T, e *env) *quic.Conn {
	t.Helper()
	cert, _ := e.certs.get(context.Background(), e.clientID)
	tc := clientTLS(cert, e.ca.ca.Bundle(), []spiffeid.ID{e.serverID})
	tc.NextProtos = []string{alpnH3}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, e.addr.String(), tc, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	return qc
}

// headersFrame encodes fields as a HEADERS frame, literally (uppercase names included).
func headersFrame(fields ...string) []byte {
	var block strings.Builder
	enc := qpack.NewEncoder(&block)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = enc.WriteField(qpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	b := appendFrameHeader(nil, frameHeaders, block.Len())
	return append(b, block.String()...)
}

// readStatus reads a response's :status from a raw request stream.
func readStatus(t *testing.T, qs *quic.Stream) (int, error) {
	t.Helper()
	_ = qs.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := byteReader{r: qs}
	typ, n, err := readFrameHeader(&br)
	if err != nil {
		return 0, err
	}
	if typ != frameHeaders {
		t.Fatalf("first response frame 0x%x", typ)
	}
	block := make([]byte, n)
	if _, err := io.ReadFull(qs, block); err != nil {
		return 0, err
	}
	fields, err := decodeFields(block, 1<<20)
	if err != nil {
		return 0, err
	}
	for _, f := range fields {
		if f.Name == ":status" {
			return atoiStatus(f.Value), nil
		}
	}
	return 0, errors.New("no :status")
}

// closedWith waits for the connection to end and returns its application error code.
func closedWith(t *testing.T, qc *quic.Conn) uint64 {
	t.Helper()
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("server did not close the connection")
	}
	var ae *quic.ApplicationError
	if errors.As(context.Cause(qc.Context()), &ae) && ae.Remote {
		return uint64(ae.ErrorCode)
	}
	t.Fatalf("connection ended with %v", context.Cause(qc.Context()))
	return 0
}

func TestH3MalformedRequests400(t *testing.T) {
	e := newEnv(t, withProto(ProtocolH3))
	auth := e.echo.String()
	tests := map[string][]byte{
		"not CONNECT":        headersFrame(":method", "GET", ":authority", auth),
		"path on CONNECT":    headersFrame(":method", "CONNECT", ":authority", auth, ":path", "/"),
		"extended CONNECT":   headersFrame(":method", "CONNECT", ":authority", auth, ":protocol", "websocket"),
		"no authority":       headersFrame(":method", "CONNECT"),
		"host name":          headersFrame(":method", "CONNECT", ":authority", "example.com:80"),
		"duplicate method":   headersFrame(":method", "CONNECT", ":method", "CONNECT", ":authority", auth),
		"uppercase name":     headersFrame(":method", "CONNECT", ":authority", auth, "Forwarded", "for=1.2.3.4"),
		"obfuscated for":     headersFrame(":method", "CONNECT", ":authority", auth, "forwarded", "for=_hidden"),
		"long baggage":       headersFrame(":method", "CONNECT", ":authority", auth, "baggage", strings.Repeat("b", 9000)),
		"spoofed authority":  headersFrame(":method", "CONNECT", ":authority", "10.9.9.9:80"),
		"too many fields":    headersFrame(strings.Split(strings.Repeat("x-a,"+strings.Repeat("v", 100)+",", 200), ",")...),
		"huge HEADERS frame": appendFrameHeader(nil, frameHeaders, 1<<30),
	}
	qc := rawH3(t, e)
	for name, req := range tests {
		t.Run(name, func(t *testing.T) {
			qs, err := qc.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// The server may stop our sending as soon as it has seen enough to refuse.
			_, _ = qs.Write(req)
			status, err := readStatus(t, qs)
			if err != nil || status != 400 {
				t.Fatalf("status %d, %v; want 400", status, err)
			}
		})
	}
	if qc.Context().Err() != nil {
		t.Fatal("a malformed request closed the connection")
	}
}

func TestH3MalformedFramesCloseConnection(t *testing.T) {
	e := newEnv(t, withProto(ProtocolH3))
	dynRef := []byte{0x01, 0x00, 0x80} // Required Insert Count 1: a dynamic table we never allowed
	tests := []struct {
		name string
		uni  []byte // on a new unidirectional stream, if set
		req  []byte // on a new request stream, if set
		code uint64
	}{
		{name: "DATA before HEADERS", req: appendFrameHeader(nil, frameData, 0), code: h3FrameUnexpected},
		{name: "HTTP/2 PRIORITY type", req: append(appendFrameHeader(nil, 0x02, 1), 0), code: h3FrameUnexpected},
		{name: "SETTINGS on request", req: appendSettings(nil, 100), code: h3FrameUnexpected},
		{name: "QPACK dynamic reference", req: append(appendFrameHeader(nil, frameHeaders, len(dynRef)), dynRef...), code: qpackDecompression},
		{name: "QPACK garbage", req: append(appendFrameHeader(nil, frameHeaders, 4), 0, 0, 0xff, 0xff), code: qpackDecompression},
		{name: "control without SETTINGS", uni: append([]byte{streamControl}, appendFrameHeader(nil, frameGoAway, 1)...), code: h3MissingSettings},
		{name: "HTTP/2 setting", uni: append([]byte{streamControl}, append(appendFrameHeader(nil, frameSettings, 2), 0x02, 0x00)...), code: h3SettingsError},
		{name: "oversized control frame", uni: append([]byte{streamControl}, appendFrameHeader(nil, frameSettings, 1<<20)...), code: h3ExcessiveLoad},
		{name: "push stream from client", uni: []byte{streamPush}, code: h3StreamCreationError},
		{name: "control stream closed", uni: append([]byte{streamControl}, appendSettings(nil, 100)...), code: h3ClosedCriticalStream},
	}
	base := runtime.NumGoroutine()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			qc := rawH3(t, e)
			if tc.uni != nil {
				us, err := qc.OpenUniStream()
				if err != nil {
					t.Fatal(err)
				}
				_, _ = us.Write(tc.uni)
				if tc.code == h3ClosedCriticalStream {
					us.Close()
				}
			}
			if tc.req != nil {
				qs, err := qc.OpenStreamSync(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				_, _ = qs.Write(tc.req)
			}
			if code := closedWith(t, qc); code != tc.code {
				t.Fatalf("closed with 0x%x, want 0x%x", code, tc.code)
			}
		})
	}
	settleGoroutines(t, base, 10)
}

// TestH3AbandonedStreamFlood: a client that opens streams and abandons them before sending
// a request (HTTP/3's rapid reset) loses its connection; handlers and goroutines stay bounded.
func TestH3AbandonedStreamFlood(t *testing.T) {
	e := newEnv(t, withProto(ProtocolH3), func(_ *env, s *ServerConfig, _ *ClientConfig) { s.MaxResets = 100 })
	base := runtime.NumGoroutine()
	qc := rawH3(t, e)
	go func() {
		for range 100000 {
			qs, err := qc.OpenStreamSync(context.Background())
			if err != nil {
				return
			}
			qs.CancelWrite(quic.StreamErrorCode(h3RequestCancelled))
			qs.CancelRead(quic.StreamErrorCode(h3RequestCancelled))
		}
	}()
	if code := closedWith(t, qc); code != h3ExcessiveLoad {
		t.Fatalf("closed with 0x%x, want H3_EXCESSIVE_LOAD", code)
	}
	settleGoroutines(t, base, 10)
	// The server still serves others.
	st, err := e.client.Dial(context.Background(), e.target())
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// TestH3StreamCountBounded: QUIC's stream credit holds a client to MaxStreams open request
// streams; streams that send nothing are dropped after the handshake timeout.
func TestH3StreamCountBounded(t *testing.T) {
	e := newEnv(t, withProto(ProtocolH3), func(_ *env, s *ServerConfig, _ *ClientConfig) {
		s.MaxStreams = 50
		s.HandshakeTimeout = time.Second
	})
	base := runtime.NumGoroutine()
	qc := rawH3(t, e)
	opened := 0
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	for range 1000 {
		qs, err := qc.OpenStreamSync(ctx)
		if err != nil {
			break
		}
		_, _ = qs.Write([]byte{frameHeaders}) // a request that never completes
		opened++
	}
	if opened != 50 {
		t.Fatalf("opened %d streams, want the server's limit of 50", opened)
	}
	if n := runtime.NumGoroutine(); n > base+50+30 {
		t.Fatalf("%d goroutines for 50 streams (base %d)", n, base)
	}
	// Stalled requests are dropped: credit comes back.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := qc.OpenStreamSync(ctx2); err != nil {
		t.Fatalf("no stream credit after the stalled requests timed out: %v", err)
	}
	qc.CloseWithError(0, "")
	settleGoroutines(t, base, 10)
}

// TestH3InitialFlood sends QUIC Initial packets from many source addresses that never
// answer: past MaxUnverifiedHandshakes the server answers with stateless Retry packets
// instead of keeping state, and a real client still connects.
func TestH3InitialFlood(t *testing.T) {
	e := newEnv(t, withProto(ProtocolH3), func(_ *env, s *ServerConfig, _ *ClientConfig) { s.MaxUnverifiedHandshakes = 16 })
	base := runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap := ms.HeapAlloc
	retries := 0
	const flood = 2000
	for range flood {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(e.addr))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(initialPacket())
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		buf := make([]byte, 1500)
		if n, err := c.Read(buf); err == nil && n > 0 && buf[0]&0xf0 == 0xf0 {
			retries++ // long header, type 3: Retry
		}
		c.Close()
	}
	if retries < flood/2 {
		t.Errorf("%d Retry packets for %d spoofed Initials", retries, flood)
	}
	if n := runtime.NumGoroutine(); n > base+16*4+20 {
		t.Errorf("%d goroutines after the flood (base %d)", n, base)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grown := int64(ms.HeapAlloc) - int64(heap); grown > 32<<20 {
		t.Errorf("heap grew by %d MiB under the flood", grown>>20)
	}
	st, err := e.client.Dial(context.Background(), e.target())
	if err != nil {
		t.Fatalf("real client during the flood: %v", err)
	}
	if st.Protocol() != ProtocolH3 {
		t.Fatal("real client fell back to HTTP/2")
	}
	st.Close()
}

// initialPacket is a QUIC v1 Initial with a fresh destination connection ID and an
// undecryptable payload, padded to 1200 bytes: what a spoofed flood sends.
func initialPacket() []byte {
	dcid := make([]byte, 8)
	_, _ = rand.Read(dcid)
	b := []byte{0xc3, 0, 0, 0, 1, byte(len(dcid))}
	b = append(b, dcid...)
	b = append(b, 0, 0) // no source connection ID, no token
	rest := 1200 - len(b) - 2
	b = quicvarint.AppendWithLen(b, uint64(rest), 2)
	payload := make([]byte, rest)
	_, _ = rand.Read(payload)
	return append(b, payload...)
}

// FuzzH3Request feeds arbitrary bytes to the server's request-stream parser: it must
// return a request or an error, never panic, and never read past a frame it refused.
func FuzzH3Request(f *testing.F) {
	good := encodeFields(requestFields(Target{}))
	f.Add(good)
	f.Add(headersFrame(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.2:1"`,
		"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "baggage", "k=v"))
	f.Add(append(append(appendFrameHeader(nil, 0x21, 2), 0, 0), headersFrame(":method", "CONNECT", ":authority", "[::1]:1")...))
	f.Add(appendFrameHeader(nil, frameHeaders, 1<<30))
	f.Add([]byte{0x01, 0x03, 0x01, 0x00, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		br := byteReader{r: strings.NewReader(string(data))}
		r, err := readH3Request(&br, DefaultMaxHeaderListSize)
		if err == nil && (!r.Authority.IsValid() || r.Authority.Port() == 0) {
			t.Fatalf("accepted request without a valid authority: %+v", r)
		}
	})
}

// FuzzH3Control feeds arbitrary bytes to the control-stream reader.
func FuzzH3Control(f *testing.F) {
	f.Add(appendSettings(nil, DefaultMaxHeaderListSize))
	f.Add(append(appendSettings(nil, 1), append(appendFrameHeader(nil, frameGoAway, 1), 4)...))
	f.Add(append(appendFrameHeader(nil, frameSettings, 2), 0x02, 0x00))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &h3conn{settings: make(chan struct{}), log: slog.New(slog.DiscardHandler)}
		br := byteReader{r: strings.NewReader(string(data))}
		_ = c.serveControl(&br)
	})
}
