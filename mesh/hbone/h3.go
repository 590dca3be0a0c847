package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http2/hpack"
)

// HBONE over HTTP/3 (RFC 9114) runs a minimal HTTP/3 engine of its own on quic-go's
// streams, for the reasons package hbone runs its own HTTP/2 one: a CONNECT stream's two
// directions end independently (a QUIC stream's FIN is the half-close), the handler owns
// the status, and the request is parsed strictly by the same rules as over HTTP/2. Only
// what HBONE needs is implemented: no server push, no dynamic QPACK table (capacity 0, so a
// header block can never reference state another stream set up), no datagrams, no 0-RTT.

// Protocol is the tunnel protocol of a stream or connection.
type Protocol uint8

const (
	// ProtocolH2 is HBONE over HTTP/2 on TCP: the default, and the only one Istio speaks.
	ProtocolH2 Protocol = iota
	// ProtocolH3 is HBONE over HTTP/3 on QUIC (UDP, same port).
	ProtocolH3
)

// String is the protocol's name in logs, metrics labels and /config_dump.
func (p Protocol) String() string {
	if p == ProtocolH3 {
		return "HBONE_H3"
	}
	return "HBONE"
}

const alpnH3 = "h3"

// HTTP/3 frame types (RFC 9114 §7.2). 0x02, 0x06, 0x08 and 0x09 are HTTP/2 types reserved
// in HTTP/3; receiving one is a connection error.
const (
	frameData        = 0x00
	frameHeaders     = 0x01
	frameCancelPush  = 0x03
	frameSettings    = 0x04
	framePushPromise = 0x05
	frameGoAway      = 0x07
	frameMaxPushID   = 0x0d
)

// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
const (
	streamControl      = 0x00
	streamPush         = 0x01
	streamQPACKEncoder = 0x02
	streamQPACKDecoder = 0x03
)

// Settings (RFC 9114 §7.2.4.1, RFC 9204 §5).
const (
	settingQPACKTableCapacity = 0x01
	settingMaxFieldSection    = 0x06
	settingQPACKBlocked       = 0x07
)

// HTTP/3 and QPACK error codes (RFC 9114 §8.1, RFC 9204 §6).
const (
	h3NoError              = 0x100
	h3GeneralProtocolError = 0x101
	h3InternalError        = 0x102
	h3StreamCreationError  = 0x103
	h3ClosedCriticalStream = 0x104
	h3FrameUnexpected      = 0x105
	h3FrameError           = 0x106
	h3ExcessiveLoad        = 0x107
	h3IDError              = 0x108
	h3SettingsError        = 0x109
	h3MissingSettings      = 0x10a
	h3RequestRejected      = 0x10b
	h3RequestCancelled     = 0x10c
	h3RequestIncomplete    = 0x10d
	h3MessageError         = 0x10e
	h3ConnectError         = 0x10f
	qpackDecompression     = 0x200
)

// maxControlFrame bounds the payload of a frame on the control stream that we read whole
// (SETTINGS, GOAWAY): they are a few bytes in practice.
const maxControlFrame = 4096

// h3Error is a connection-level HTTP/3 error: the connection is closed with code.
type h3Error struct {
	code uint64
	msg  string
}

func (e *h3Error) Error() string { return fmt.Sprintf("http3 error 0x%x: %s", e.code, e.msg) }

func connErr(code uint64, format string, args ...any) *h3Error {
	return &h3Error{code: code, msg: fmt.Sprintf(format, args...)}
}

// byteReader reads one byte at a time from a stream, for the varints of frame headers.
type byteReader struct {
	r io.Reader
	b [1]byte
}

func (br *byteReader) ReadByte() (byte, error) {
	n, err := br.r.Read(br.b[:])
	if n == 1 {
		return br.b[0], nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return 0, err
}

// readFrameHeader reads a frame's type and length. io.EOF means the stream ended cleanly
// on a frame boundary; an end inside the header is io.ErrUnexpectedEOF.
func readFrameHeader(br *byteReader) (typ, length uint64, err error) {
	typ, err = quicvarint.Read(br)
	if err != nil {
		return 0, 0, err
	}
	length, err = quicvarint.Read(br)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return typ, length, err
}

// reservedH2Frame reports the HTTP/2 frame types HTTP/3 reserves (RFC 9114 §7.2.8).
func reservedH2Frame(t uint64) bool { return t == 0x02 || t == 0x06 || t == 0x08 || t == 0x09 }

// appendFrameHeader appends a frame header for a payload of length n.
func appendFrameHeader(b []byte, typ uint64, n int) []byte {
	b = quicvarint.Append(b, typ)
	return quicvarint.Append(b, uint64(n))
}

// appendSettings appends our SETTINGS frame: no dynamic QPACK table, no blocked streams,
// and the header list limit.
func appendSettings(b []byte, maxField uint32) []byte {
	var p []byte
	p = quicvarint.Append(p, settingQPACKTableCapacity)
	p = quicvarint.Append(p, 0)
	p = quicvarint.Append(p, settingQPACKBlocked)
	p = quicvarint.Append(p, 0)
	p = quicvarint.Append(p, settingMaxFieldSection)
	p = quicvarint.Append(p, uint64(maxField))
	b = appendFrameHeader(b, frameSettings, len(p))
	return append(b, p...)
}

// parseSettings validates a peer's SETTINGS payload and returns its field-section limit
// (0: unlimited).
func parseSettings(p []byte) (maxField uint64, err error) {
	seen := map[uint64]bool{}
	for len(p) > 0 {
		id, n, err := quicvarint.Parse(p)
		if err != nil {
			return 0, connErr(h3FrameError, "truncated setting")
		}
		p = p[n:]
		v, n, err := quicvarint.Parse(p)
		if err != nil {
			return 0, connErr(h3FrameError, "truncated setting value")
		}
		p = p[n:]
		if seen[id] {
			return 0, connErr(h3SettingsError, "duplicate setting 0x%x", id)
		}
		seen[id] = true
		switch id {
		case 0x02, 0x03, 0x04, 0x05: // HTTP/2 settings, reserved (RFC 9114 §7.2.4.1)
			return 0, connErr(h3SettingsError, "HTTP/2 setting 0x%x", id)
		case settingMaxFieldSection:
			maxField = v
		}
	}
	return maxField, nil
}

// encodeFields QPACK-encodes fields (static table and literals only) into one HEADERS frame.
func encodeFields(fields []hpack.HeaderField) []byte {
	var block strings.Builder
	enc := qpack.NewEncoder(&block)
	for _, f := range fields {
		_ = enc.WriteField(qpack.HeaderField{Name: f.Name, Value: f.Value})
	}
	_ = enc.Close()
	frame := appendFrameHeader(make([]byte, 0, block.Len()+16), frameHeaders, block.Len())
	return append(frame, block.String()...)
}

// errHeaderTooLarge says a header block exceeds MaxHeaderListSize; the request is answered
// 400 without being decoded further.
var errHeaderTooLarge = errors.New("request headers exceed the size limit")

// decodeFields decodes a QPACK header block into fields, counting sizes as HTTP/2 does
// (name + value + 32 per field) against limit. A field-name with an uppercase letter is
// malformed in HTTP/3 (RFC 9114 §4.2). QPACK errors are connection errors
// (QPACK_DECOMPRESSION_FAILED); the rest are the stream's.
func decodeFields(block []byte, limit uint32) ([]hpack.HeaderField, error) {
	dec := qpack.NewDecoder().Decode(block)
	fields := make([]hpack.HeaderField, 0, 6)
	var size uint64
	for {
		f, err := dec()
		if err == io.EOF {
			return fields, nil
		}
		if err != nil {
			return nil, connErr(qpackDecompression, "qpack: %v", err)
		}
		size += uint64(len(f.Name) + len(f.Value) + 32)
		if size > uint64(limit) {
			return nil, errHeaderTooLarge
		}
		for i := 0; i < len(f.Name); i++ {
			if c := f.Name[i]; c >= 'A' && c <= 'Z' {
				return nil, fmt.Errorf("header name %q is not lowercase", trim(f.Name))
			}
		}
		fields = append(fields, hpack.HeaderField{Name: f.Name, Value: f.Value})
	}
}

// responseFields builds a CONNECT response header block.
func responseFields(status int, reason string) []hpack.HeaderField {
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	if reason != "" {
		fields = append(fields, hpack.HeaderField{Name: "x-hbone-reason", Value: sanitizeReason(reason)})
	}
	return fields
}

// readH3Request reads the start of a request stream up to and including the HEADERS frame
// and parses the CONNECT request. Unknown frame types before HEADERS are skipped (RFC 9114
// §9), within the header budget. It returns a *h3Error for connection errors,
// errHeaderTooLarge, or another error for a malformed request (400). It is a pure function
// of the bytes so that it can be fuzzed.
func readH3Request(br *byteReader, limit uint32) (*Request, error) {
	skipped := uint64(0)
	for {
		typ, n, err := readFrameHeader(br)
		if err != nil {
			if err == io.EOF {
				return nil, errors.New("request stream ended before HEADERS")
			}
			return nil, err
		}
		switch {
		case typ == frameHeaders:
			if n > uint64(limit) {
				return nil, errHeaderTooLarge
			}
			block := make([]byte, n)
			if _, err := io.ReadFull(br.r, block); err != nil {
				return nil, fmt.Errorf("read request headers: %w", err)
			}
			fields, err := decodeFields(block, limit)
			if err != nil {
				return nil, err
			}
			return parseFields(fields)
		case typ == frameData, typ == frameSettings, typ == frameGoAway, typ == frameMaxPushID,
			typ == frameCancelPush, typ == framePushPromise, reservedH2Frame(typ):
			return nil, connErr(h3FrameUnexpected, "frame type 0x%x before request HEADERS", typ)
		default:
			skipped += n
			if skipped > uint64(limit) {
				return nil, errHeaderTooLarge
			}
			if _, err := io.CopyN(io.Discard, br.r, int64(n)); err != nil {
				return nil, fmt.Errorf("skip frame: %w", err)
			}
		}
	}
}

// quicTracer, when a test sets it, receives every QUIC connection's qlog events
// (BenchmarkLossyLink reads congestion windows and losses from them). Nil in production.
var quicTracer func(ctx context.Context, isClient bool, connID quic.ConnectionID) qlogwriter.Trace

// quicConfig builds the QUIC configuration from the HBONE connection settings: windows
// matched to HTTP/2's (4 MiB per stream, 16 MiB per connection, fixed: no auto-tuning
// beyond them), the peer's stream budget, keep-alive and idle, and no 0-RTT.
func quicConfig(cfg ConnConfig, incomingStreams int64) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           cfg.HandshakeTimeout / 2,
		MaxIdleTimeout:                 cfg.PingInterval + cfg.PingTimeout,
		KeepAlivePeriod:                cfg.PingInterval,
		InitialStreamReceiveWindow:     uint64(cfg.StreamWindow),
		MaxStreamReceiveWindow:         uint64(cfg.StreamWindow),
		InitialConnectionReceiveWindow: uint64(cfg.ConnWindow),
		MaxConnectionReceiveWindow:     uint64(cfg.ConnWindow),
		MaxIncomingStreams:             incomingStreams,
		// control, QPACK encoder and decoder, and a little room for streams of unknown
		// types that we refuse.
		MaxIncomingUniStreams: 8,
		Allow0RTT:             false,
		Tracer:                quicTracer,
	}
}
