package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"ambit.dev/mesh/wait"
)

// rawClient speaks HTTP/2 frames to the server by hand over a verified mTLS connection,
// so tests can send what a well-behaved client never would and assert on the frames that
// come back.
type rawClient struct {
	wmu  sync.Mutex // writes from a test's flood goroutine and next's acks
	t    *testing.T
	tc   *tls.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func dialRaw(t *testing.T, e *env) *rawClient {
	t.Helper()
	cert, _ := e.certs.get(context.Background(), e.clientID)
	tc, err := tls.Dial("tcp", e.addr.String(), &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{*cert},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawClient{t: t, tc: tc, fr: http2.NewFramer(tc, tc)}
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.henc = hpack.NewEncoder(&rc.hbuf)
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return rc
}

func (rc *rawClient) headerBlock(fields ...string) []byte {
	rc.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = rc.henc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(rc.hbuf.Bytes())
}

func (rc *rawClient) connect(id uint32, fields ...string) {
	rc.t.Helper()
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.headerBlock(fields...), EndHeaders: true}); err != nil {
		rc.t.Fatal(err)
	}
}

// next returns the next frame that is not connection housekeeping.
func (rc *rawClient) next() (http2.Frame, error) {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				rc.wmu.Lock()
				_ = rc.fr.WriteSettingsAck()
				rc.wmu.Unlock()
			}
			continue
		case *http2.WindowUpdateFrame:
			continue
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				rc.wmu.Lock()
				_ = rc.fr.WritePing(true, data)
				rc.wmu.Unlock()
			}
			continue
		}
		return f, nil
	}
}

// expectStatus reads until the response for stream id and checks its status.
func (rc *rawClient) expectStatus(id uint32, want string) {
	rc.t.Helper()
	for {
		f, err := rc.next()
		if err != nil {
			rc.t.Fatalf("waiting for status %s: %v", want, err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			if got := h.PseudoValue("status"); got != want {
				rc.t.Fatalf("stream %d: status %s, want %s", id, got, want)
			}
			return
		}
	}
}

// expectGoAway reads until the server's GOAWAY and then the connection's end.
func (rc *rawClient) expectGoAway(want http2.ErrCode) {
	rc.t.Helper()
	for {
		f, err := rc.next()
		if err != nil {
			rc.t.Fatalf("connection ended without GOAWAY %v: %v", want, err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != want {
				rc.t.Fatalf("GOAWAY %v (%s), want %v", g.ErrCode, g.DebugData(), want)
			}
			return
		}
	}
}

// settleGoroutines waits for the goroutine count to come back to within slack of base; it
// fails with every goroutine's stack.
func settleGoroutines(t *testing.T, base, slack int) {
	t.Helper()
	wait.Until(t, 10*time.Second, "the goroutines to end", func() error {
		if n := runtime.NumGoroutine(); n > base+slack {
			buf := make([]byte, 1<<20)
			return fmt.Errorf("goroutines: %d, baseline %d\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

func TestMalformedRequests400(t *testing.T) {
	e := newEnv(t)
	auth := e.echo.String()
	tests := []struct {
		name   string
		fields []string
	}{
		{"GET instead of CONNECT", []string{":method", "GET", ":authority", auth, ":scheme", "https", ":path", "/"}},
		{"no authority", []string{":method", "CONNECT"}},
		{"hostname authority", []string{":method", "CONNECT", ":authority", "example.com:80"}},
		{"authority without port", []string{":method", "CONNECT", ":authority", "127.0.0.1"}},
		{"path on CONNECT", []string{":method", "CONNECT", ":authority", auth, ":path", "/"}},
		{"extended CONNECT", []string{":method", "CONNECT", ":authority", auth, ":protocol", "websocket"}},
		{"forged forwarded", []string{":method", "CONNECT", ":authority", auth, "forwarded", "for=_hidden"}},
	}
	rc := dialRaw(t, e)
	for i, tc := range tests {
		id := uint32(2*i + 1)
		rc.connect(id, tc.fields...)
		rc.expectStatus(id, "400")
	}
	// The connection survives malformed requests: a good one still works.
	id := uint32(2*len(tests) + 1)
	rc.connect(id, ":method", "CONNECT", ":authority", auth)
	rc.expectStatus(id, "200")
}

func TestOversizedHeaders400(t *testing.T) {
	e := newEnv(t)
	rc := dialRaw(t, e)
	big := strings.Repeat("x", 12<<10)
	block := rc.headerBlock(":method", "CONNECT", ":authority", e.echo.String(), "baggage", big, "x-pad", big)
	// Split over CONTINUATION frames as a real client would.
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:8000]}); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteContinuation(1, false, block[8000:16000]); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteContinuation(1, true, block[16000:]); err != nil {
		t.Fatal(err)
	}
	rc.expectStatus(1, "400")
}

func TestContinuationFloodClosesConnection(t *testing.T) {
	e := newEnv(t)
	base := runtime.NumGoroutine()
	rc := dialRaw(t, e)
	block := rc.headerBlock(":method", "CONNECT", ":authority", e.echo.String())
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block}); err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0}, 16<<10) // hpack "indexed 0": never decodes to a field
	sent := 0
	for ; sent < 2000; sent++ {
		if err := rc.fr.WriteContinuation(1, false, junk); err != nil {
			break // the server hung up, as it should
		}
	}
	_, err := io.Copy(io.Discard, rc.tc)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Logf("read after flood: %v", err)
	}
	if sent == 2000 {
		t.Fatalf("server accepted %d CONTINUATION frames (32 MiB) without closing", sent)
	}
	settleGoroutines(t, base, 2)
}

func TestRapidResetClosesConnection(t *testing.T) {
	var maxResets = 100
	e := newEnv(t, func(_ *env, s *ServerConfig, _ *ClientConfig) { s.MaxResets = maxResets })
	block := make(chan struct{})
	defer close(block)
	e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
		select { // a slow handler: resets must not pile goroutines up behind it
		case <-block:
		case <-ctx.Done():
		}
	})
	base := runtime.NumGoroutine()
	rc := dialRaw(t, e)
	go func() {
		for id := uint32(1); id < 20000; id += 2 {
			rc.wmu.Lock()
			err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.headerBlock(":method", "CONNECT", ":authority", e.echo.String()), EndHeaders: true})
			if err == nil {
				err = rc.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			}
			rc.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	rc.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	rc.tc.Close()
	settleGoroutines(t, base, 2)
}

func TestStreamLimitRefusesExtraStreams(t *testing.T) {
	e := newEnv(t, func(_ *env, s *ServerConfig, _ *ClientConfig) { s.MaxStreams = 5 })
	block := make(chan struct{})
	defer close(block)
	e.handler = HandlerFunc(func(ctx context.Context, r *Request) {
		_, _ = r.Accept()
		select {
		case <-block:
		case <-ctx.Done():
		}
	})
	rc := dialRaw(t, e)
	for i := range 5 {
		rc.connect(uint32(2*i+1), ":method", "CONNECT", ":authority", e.echo.String())
		rc.expectStatus(uint32(2*i+1), "200")
	}
	rc.connect(11, ":method", "CONNECT", ":authority", e.echo.String())
	for {
		f, err := rc.next()
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 11 {
			if r.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("stream 11 reset with %v, want REFUSED_STREAM", r.ErrCode)
			}
			return
		}
	}
}

func TestMalformedFramesCloseConnection(t *testing.T) {
	tests := []struct {
		name  string
		write func(rc *rawClient) error
		want  http2.ErrCode
	}{
		{"DATA on stream 0", func(rc *rawClient) error { return rc.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x")) }, http2.ErrCodeProtocol},
		{"SETTINGS of bad length", func(rc *rawClient) error { return rc.fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{1, 2, 3}) }, http2.ErrCodeFrameSize},
		{"even stream ID from client", func(rc *rawClient) error {
			return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: rc.headerBlock(":method", "CONNECT"), EndHeaders: true})
		}, http2.ErrCodeProtocol},
		{"PUSH_PROMISE from client", func(rc *rawClient) error {
			return rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}, http2.ErrCodeProtocol},
		{"bad hpack", func(rc *rawClient) error {
			return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true})
		}, http2.ErrCodeCompression},
		{"window overflow", func(rc *rawClient) error { return rc.fr.WriteWindowUpdate(0, 1<<31-1) }, http2.ErrCodeProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			base := runtime.NumGoroutine()
			rc := dialRaw(t, e)
			if err := tc.write(rc); err != nil {
				t.Fatal(err)
			}
			rc.expectGoAway(tc.want)
			rc.tc.Close()
			settleGoroutines(t, base, 2)
		})
	}
}

// TestStalledPeersTimedOut: a peer that connects and never speaks, never finishes the
// preface, or stops answering PING is dropped.
func TestStalledPeersTimedOut(t *testing.T) {
	short := func(_ *env, s *ServerConfig, _ *ClientConfig) {
		s.HandshakeTimeout = 200 * time.Millisecond
		s.PingInterval = 100 * time.Millisecond
		s.PingTimeout = 200 * time.Millisecond
	}
	t.Run("no TLS hello", func(t *testing.T) {
		e := newEnv(t, short)
		c, err := net.Dial("tcp", e.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("silent TCP peer: read %v, want EOF from the server hanging up", err)
		}
	})
	t.Run("no HTTP/2 preface", func(t *testing.T) {
		e := newEnv(t, short)
		cert, _ := e.certs.get(context.Background(), e.clientID)
		tc, err := tls.Dial("tcp", e.addr.String(), &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}})
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, tc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("server kept a connection that never sent the preface")
		}
	})
	t.Run("ignores PING", func(t *testing.T) {
		e := newEnv(t, short)
		rc := dialRaw(t, e)
		start := time.Now()
		for {
			// Read without answering anything.
			if _, err := rc.fr.ReadFrame(); err != nil {
				break
			}
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("server did not drop a peer that ignores PING")
		}
	})
}

func TestIdleConnectionClosed(t *testing.T) {
	e := newEnv(t, func(_ *env, _ *ServerConfig, c *ClientConfig) {
		c.IdleTimeout = 200 * time.Millisecond
	})
	st, err := e.client.Dial(context.Background(), e.target())
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	wait.Until(t, 5*time.Second, "the idle pooled connection to be released", func() error {
		if n := e.client.Conns(); n != 0 {
			return fmt.Errorf("%d pooled connections", n)
		}
		return nil
	})
}

// FuzzConnectRequest feeds arbitrary HPACK header blocks to the CONNECT request parser.
func FuzzConnectRequest(f *testing.F) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, hf := range requestFields(Target{}) {
		_ = enc.WriteField(hf)
	}
	for _, fields := range [][]hpack.HeaderField{
		{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:8080"}, {Name: "forwarded", Value: `for="10.0.0.2:1234"`}, {Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
		{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "[fd00::1]:80"}, {Name: "forwarded", Value: `for="[fd00::2]:1"; proto=https, for=1.2.3.4`}},
		{{Name: ":method", Value: "GET"}, {Name: ":path", Value: "/"}},
	} {
		buf.Reset()
		for _, hf := range fields {
			_ = enc.WriteField(hf)
		}
		f.Add(bytes.Clone(buf.Bytes()))
	}
	f.Fuzz(func(t *testing.T, block []byte) {
		dec := hpack.NewDecoder(4096, nil)
		dec.SetMaxStringLength(DefaultMaxHeaderListSize)
		fields, err := dec.DecodeFull(block)
		if err != nil {
			return
		}
		r, err := parseFields(fields)
		if err != nil {
			return
		}
		if !r.Authority.IsValid() || r.Authority.Port() == 0 {
			t.Fatalf("accepted authority %v", r.Authority)
		}
		if r.Traceparent != "" && !validTraceparent(r.Traceparent) {
			t.Fatalf("kept invalid traceparent %q", r.Traceparent)
		}
	})
}
