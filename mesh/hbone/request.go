package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Request is one CONNECT stream as the server sees it. Every field but Peer comes from the
// client's headers and is untrusted; Peer comes from the verified certificate.
type Request struct {
	// Authority is the destination the client asked for: a pod IP:port, or the original
	// service VIP:port when this proxy is a waypoint.
	Authority netip.AddrPort
	// Forwarded is the original source address from the Forwarded header, if any.
	Forwarded netip.AddrPort
	// Traceparent and Baggage are propagated W3C trace context; an invalid traceparent is
	// dropped, as the W3C spec requires.
	Traceparent string
	Baggage     string
	// Peer is the identity proven by the client's certificate.
	Peer spiffeid.ID
	// Local is the address the TLS connection arrived at; Remote the peer's address.
	Local, Remote netip.AddrPort
	// Protocol is the tunnel protocol the request arrived on.
	Protocol Protocol

	stream    *Stream
	responded bool
}

// Accept answers 200 and returns the stream. Call it only once the upstream connection is
// established: HBONE never answers 200 before that.
func (r *Request) Accept() (*Stream, error) {
	if r.responded {
		return nil, errors.New("hbone: request already answered")
	}
	r.responded = true
	if err := r.stream.respond(200, ""); err != nil {
		return nil, err
	}
	return r.stream, nil
}

// Reject answers status (400 malformed, 401 denied, 503 unreachable) with a short reason
// and ends the stream.
func (r *Request) Reject(status int, reason string) error {
	if r.responded {
		return errors.New("hbone: request already answered")
	}
	r.responded = true
	err := r.stream.respond(status, reason)
	r.stream.Close()
	return err
}

// Header names HBONE uses (HTTP/2 lowercases them on the wire).
const (
	headerForwarded   = "forwarded"
	headerTraceparent = "traceparent"
	headerBaggage     = "baggage"
	maxBaggageLen     = 8192
)

// parseRequest validates a CONNECT header block. It is a pure function of the headers so
// that it can be fuzzed on its own.
func parseRequest(f *http2.MetaHeadersFrame) (*Request, error) {
	if f.Truncated {
		return nil, errors.New("request headers exceed the size limit")
	}
	return parseFields(f.Fields)
}

func parseFields(fields []hpack.HeaderField) (*Request, error) {
	var (
		r                    Request
		method, authority    string
		seenMethod, seenAuth bool
	)
	for _, f := range fields {
		if err := checkFieldValue(f); err != nil {
			return nil, err
		}
		if f.IsPseudo() {
			switch f.Name {
			case ":method":
				if seenMethod {
					return nil, errors.New("duplicate :method")
				}
				method, seenMethod = f.Value, true
			case ":authority":
				if seenAuth {
					return nil, errors.New("duplicate :authority")
				}
				authority, seenAuth = f.Value, true
			default:
				// RFC 9113 §8.5: a CONNECT request has no :scheme or :path; extended
				// CONNECT (:protocol) is not HBONE.
				return nil, fmt.Errorf("pseudo-header %s not allowed in CONNECT", f.Name)
			}
			continue
		}
		switch f.Name {
		case headerForwarded:
			if r.Forwarded.IsValid() {
				continue // the first element names the original client
			}
			ap, err := parseForwarded(f.Value)
			if err != nil {
				return nil, err
			}
			r.Forwarded = ap
		case headerTraceparent:
			if validTraceparent(f.Value) {
				r.Traceparent = f.Value
			}
		case headerBaggage:
			if len(f.Value) > maxBaggageLen {
				return nil, errors.New("baggage header too long")
			}
			r.Baggage = cleanBaggage(f.Value)
		}
	}
	if method != "CONNECT" {
		return nil, fmt.Errorf("method %q is not CONNECT", method)
	}
	ap, err := parseAuthority(authority)
	if err != nil {
		return nil, err
	}
	r.Authority = ap
	return &r, nil
}

// parseAuthority accepts only an IP literal and a port: HBONE never resolves names.
func parseAuthority(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("missing :authority")
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("authority %q is not ip:port", trim(s))
	}
	if ap.Port() == 0 || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("authority %q is not a valid destination", trim(s))
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// parseForwarded reads the for= parameter of the first Forwarded element (RFC 7239). Only
// an IP, with or without a port, is meaningful to the mesh; an obfuscated identifier is an
// error.
func parseForwarded(v string) (netip.AddrPort, error) {
	elem, _, _ := strings.Cut(v, ",")
	for _, pair := range strings.Split(elem, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		val = strings.Trim(val, `"`)
		if ap, err := netip.ParseAddrPort(val); err == nil && ap.Addr().Zone() == "" {
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
		}
		if a, err := netip.ParseAddr(strings.Trim(val, "[]")); err == nil && a.Zone() == "" {
			return netip.AddrPortFrom(a.Unmap(), 0), nil
		}
		return netip.AddrPort{}, fmt.Errorf("forwarded for=%q is not an address", trim(val))
	}
	return netip.AddrPort{}, nil
}

// validTraceparent checks the W3C version-00 shape: 00-<32 hex>-<16 hex>-<2 hex>, with
// non-zero trace and span IDs. Version 00 is exactly 55 characters; a later version may
// append "-" and more, which must be printable ASCII since it is forwarded as is.
func validTraceparent(s string) bool {
	if len(s) < 55 || (len(s) > 55 && (s[55] != '-' || strings.HasPrefix(s, "00") || !printableASCII(s))) {
		return false
	}
	parts := strings.Split(s[:55], "-")
	if len(parts) != 4 || len(parts[0]) != 2 || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		return false
	}
	for _, p := range parts {
		if !isLowerHex(p) {
			return false
		}
	}
	return parts[0] != "ff" && strings.Trim(parts[1], "0") != "" && strings.Trim(parts[2], "0") != ""
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func trim(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// requestFields builds the CONNECT header block a client sends.
func requestFields(t Target) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 5)
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: "CONNECT"},
		hpack.HeaderField{Name: ":authority", Value: t.Authority.String()},
	)
	if t.Forwarded.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: headerForwarded, Value: fmt.Sprintf("for=%q", t.Forwarded.String())})
	}
	if t.Traceparent != "" {
		fields = append(fields, hpack.HeaderField{Name: headerTraceparent, Value: t.Traceparent})
	}
	if t.Baggage != "" {
		fields = append(fields, hpack.HeaderField{Name: headerBaggage, Value: t.Baggage})
	}
	return fields
}

// SameAddress is the default anti-spoofing check: the CONNECT authority must name the
// address the connection actually arrived at.
func SameAddress(_ context.Context, r *Request) error {
	if r.Authority.Addr() != r.Local.Addr() {
		return fmt.Errorf("authority %s does not match the address %s the connection arrived for", r.Authority.Addr(), r.Local.Addr())
	}
	return nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case interface{ AddrPort() netip.AddrPort }:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
