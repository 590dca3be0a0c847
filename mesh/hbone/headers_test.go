package hbone

import (
	"context"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"

	"golang.org/x/net/http2/hpack"
)

var controlByteHeaders = [][2]string{
	{"baggage", "a=b\r\nx-injected: 1"},
	{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"},
	{"forwarded", "for=\"10.0.0.1:1\"\x00"},
	{"x-other", "\r\n"},
}

// TestHeaderValuesWithControlBytesRefused: a CONNECT whose header carries CR LF or NUL is
// malformed (RFC 9113 §8.2.1). HBONE would otherwise forward it to the next hop, where CR LF
// in an HTTP/1 upstream starts a header of the sender's choosing. Over HTTP/2 x/net's framer
// resets such a stream before our parser sees it; parseFields refuses it too, for the
// transports whose decoder does not (HTTP/3's QPACK).
func TestHeaderValuesWithControlBytesRefused(t *testing.T) {
	for _, kv := range controlByteHeaders {
		if _, err := parseFields([]hpack.HeaderField{
			{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"},
			{Name: kv[0], Value: kv[1]},
		}); err == nil {
			t.Errorf("parseFields accepted %s: %q", kv[0], kv[1])
		}
	}
	e := newEnv(t)
	var handled atomic.Int32
	e.handler = HandlerFunc(func(ctx context.Context, r *Request) { handled.Add(1); _ = r.Reject(503, "") })
	rc := dialRaw(t, e)
	for i, kv := range controlByteHeaders {
		id := uint32(2*i + 1)
		rc.connect(id, ":method", "CONNECT", ":authority", e.echo.String(), kv[0], kv[1])
		for {
			f, err := rc.next()
			if err != nil {
				t.Fatalf("%s: waiting for the refusal: %v", kv[0], err)
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
				if got := h.PseudoValue("status"); got != "400" {
					t.Fatalf("%s: status %s, want 400 or RST_STREAM", kv[0], got)
				}
				break
			}
			if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == id {
				break
			}
		}
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("handler ran for %d requests with control bytes", n)
	}
}

// TestTraceContextKeptOnlyWhenForwardable: trace context that is not W3C-shaped or not
// printable ASCII is dropped rather than forwarded; the request itself goes through.
func TestTraceContextKeptOnlyWhenForwardable(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name                 string
		traceparent, baggage string
		wantTP, wantBaggage  string
	}{
		{"valid", tp, "k=v,k2=v2", tp, "k=v,k2=v2"},
		{"version 00 with a tail", tp + "-x", "", "", ""},
		{"future version with a tail", "01" + tp[2:] + "-x", "", "01" + tp[2:] + "-x", ""},
		{"future version, tail not ascii", "01" + tp[2:] + "-\xff", "", "", ""},
		{"baggage not ascii", "", "k=\xe2\x82\xac", "", ""},
		{"baggage padded", "", "  k=v\t", "", "k=v"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseFields([]hpack.HeaderField{
				{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"},
				{Name: "traceparent", Value: tt.traceparent}, {Name: "baggage", Value: tt.baggage},
			})
			if err != nil {
				t.Fatal(err)
			}
			if r.Traceparent != tt.wantTP || r.Baggage != tt.wantBaggage {
				t.Fatalf("traceparent %q baggage %q; want %q, %q", r.Traceparent, r.Baggage, tt.wantTP, tt.wantBaggage)
			}
		})
	}
}
