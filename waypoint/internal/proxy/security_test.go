package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Raw speaks HTTP/2 frames by hand to the waypoint, through an HBONE tunnel.
type h2Raw struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
}

func dialH2Raw(t *testing.T, e *env) *h2Raw {
	t.Helper()
	c := e.mustDial(t, webVIP)
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	h := &h2Raw{t: t, c: c, fr: http2.NewFramer(c, c)}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// status reads frames until the response HEADERS (or a reset) of stream id.
func (h *h2Raw) status(id uint32) (string, error) {
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return "", err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f.PseudoValue("status"), nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "RST_STREAM " + f.ErrCode.String(), nil
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = h.fr.WriteSettingsAck()
			}
		}
	}
}

func headerBlock(fields ...string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return buf.Bytes()
}

// TestHPACKAmplificationBounded: a header block of about 20 KB on the wire that decodes to
// 48 MB of headers (one 4 KB literal added to the dynamic table, then 12,000 one-byte
// references to it) is answered 431 by net/http's HTTP/2 server: it counts the decoded list
// against MaxHeaderBytes (SETTINGS_MAX_HEADER_LIST_SIZE, 32 KiB by default) and stops
// keeping fields past it, before any handler runs. (Go's decoder hands out the dynamic
// table's string for each reference rather than a copy, so memory does not amplify either.)
func TestHPACKAmplificationBounded(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	seen := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	h := dialH2Raw(t, e)

	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "web"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = enc.WriteField(hpack.HeaderField{Name: "x-a", Value: strings.Repeat("a", 4000)}) // indexed as 62
	const refs = 12000
	block := append(buf.Bytes(), bytes.Repeat([]byte{0x80 | 62}, refs)...)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	first := true
	for len(block) > 0 {
		chunk := block[:min(len(block), 16384)]
		block = block[len(chunk):]
		var err error
		if first {
			err = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: chunk, EndStream: true, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = h.fr.WriteContinuation(1, len(block) == 0, chunk)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := h.status(1)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got != "431" {
		t.Fatalf("status %s for a header list decoding to %d MB, want 431", got, refs*4000>>20)
	}
	// The 431 is net/http's own, before any handler: the waypoint's pipeline never saw the
	// request (a waypoint that forwarded it would count it, and get its 431 from the pod).
	if n := counter(t, e, "istio_requests_total", nil); n != 0 || seen.Load() != 0 {
		t.Fatalf("the request reached the waypoint's handler (%v requests) or the backend (%d)", n, seen.Load())
	}
	// Generous: the process allocates for TLS, HBONE and the test itself meanwhile; 48 MB of
	// decoded strings would be far beyond it.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Fatalf("the waypoint allocated %d MB decoding the header block", grew>>20)
	}
}

// TestNoSmugglingAfterConnectOrUpgrade: the waypoint proxies neither CONNECT nor protocol
// upgrades, so bytes sent after such a request must never be read as a request of their
// own: over HTTP/1 the connection ends after the refusal; over HTTP/2 the stream is refused
// and its DATA never reach a backend, while the connection stays usable.
func TestNoSmugglingAfterConnectOrUpgrade(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	seen := e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(ok))
	smuggled := "GET /admin HTTP/1.1\r\nHost: web\r\n\r\n"
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"HTTP/1 CONNECT", "CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n" + smuggled, 400},
		{"HTTP/1 Upgrade websocket", "GET /chat HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + smuggled, 501},
		{"HTTP/1 Upgrade h2c", "GET / HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + http2.ClientPreface, 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.mustDial(t, webVIP)
			go func() { _, _ = io.WriteString(c, tc.req) }()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			rest, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, rest, tc.want)
			}
			if more, _ := io.ReadAll(c); len(more) > 0 {
				t.Fatalf("answered what followed the refused request: %q", more)
			}
		})
	}
	t.Run("HTTP/2 CONNECT then DATA", func(t *testing.T) {
		h := dialH2Raw(t, e)
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headerBlock(":method", "CONNECT", ":authority", "web:80"), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := h.fr.WriteData(1, false, []byte(smuggled)); err != nil {
			t.Fatal(err)
		}
		if got, err := h.status(1); err != nil || got != "400" {
			t.Fatalf("CONNECT stream: %q, %v; want 400", got, err)
		}
		_ = h.fr.WriteData(1, true, []byte(smuggled))
		// The same connection still serves an ordinary request, and only that one.
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: headerBlock(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "web"), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if got, err := h.status(3); err != nil || got != "200" {
			t.Fatalf("GET after the refused CONNECT: %q, %v; want 200", got, err)
		}
	})
	t.Run("HTTP/2 Upgrade header", func(t *testing.T) {
		h := dialH2Raw(t, e)
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headerBlock(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "web", "upgrade", "websocket", "connection", "upgrade"), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		_ = h.fr.WriteData(1, true, []byte(smuggled))
		got, err := h.status(1)
		if err != nil || got == "200" {
			t.Fatalf("HTTP/2 request with Upgrade: %q, %v; want it refused", got, err)
		}
	})
	if n := seen.Load(); n != 1 {
		t.Fatalf("backend saw %d requests, want only the one ordinary GET", n)
	}
}

// TestH2FloodsClosed: a downstream HTTP/2 client that sends more than h2FloodFrames PINGs,
// SETTINGS or empty DATA frames within h2FloodWindow loses its connection, even while it
// reads every answer (net/http would otherwise answer forever).
func TestH2FloodsClosed(t *testing.T) {
	e := newEnv(t)
	web := e.service("web", "10.96.0.10")
	e.pod("web-1", "10.244.0.11", web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	for _, tc := range []struct {
		name  string
		frame func(h *h2Raw, i int) error
	}{
		{"PING", func(h *h2Raw, i int) error { return h.fr.WritePing(false, [8]byte{byte(i), byte(i >> 8)}) }},
		{"SETTINGS", func(h *h2Raw, _ int) error { return h.fr.WriteSettings() }},
		{"empty DATA", func(h *h2Raw, _ int) error { return h.fr.WriteData(1, false, nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := dialH2Raw(t, e)
			// A POST whose body never ends keeps stream 1 open for the empty DATA frames.
			if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headerBlock(":method", "POST", ":scheme", "http", ":path", "/", ":authority", "web"), EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
			wmu := make(chan struct{}, 1)
			go func() {
				for i := range 2 * h2FloodFrames {
					wmu <- struct{}{}
					err := tc.frame(h, i)
					<-wmu
					if err != nil {
						return
					}
				}
			}()
			// Read (and acknowledge) everything until the connection ends; a connection
			// that survives the flood is still open when the read deadline passes.
			_ = h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				f, err := h.fr.ReadFrame()
				if err != nil {
					if isTimeout(err) {
						t.Fatalf("connection survived %d %s frames", 2*h2FloodFrames, tc.name)
					}
					return
				}
				if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
					wmu <- struct{}{}
					_ = h.fr.WriteSettingsAck()
					<-wmu
				}
			}
		})
	}
}
