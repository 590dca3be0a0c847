package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"ambit.dev/mesh/hbone"
	configv1 "ambit.dev/proto/config/v1"
)

// protocol is what a tunnelled connection carries.
type protocol int

const (
	protoTCP protocol = iota
	protoHTTP1
	protoHTTP2
)

func (p protocol) String() string {
	return [...]string{"tcp", "http/1.1", "h2c"}[p]
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniff reads just enough of the stream to tell an HTTP/2 preface, an HTTP/1.x request
// line and anything else apart. Nothing is consumed: br keeps the bytes.
func sniff(br *bufio.Reader) (protocol, error) {
	// An HTTP/1 method is a run of upper-case letters followed by a space; the HTTP/2
	// preface starts "PRI * HTTP/2.0". Read byte by byte as they arrive, so that a short
	// non-HTTP greeting is classified at once instead of waiting for more.
	n := 1
	for {
		b, err := br.Peek(n)
		if err != nil && len(b) < n {
			if len(b) > 0 && errors.Is(err, io.EOF) {
				return protoTCP, nil
			}
			return protoTCP, err
		}
		if len(b) >= len(h2Preface) && string(b[:len(h2Preface)]) == h2Preface {
			return protoHTTP2, nil
		}
		if !bytes.HasPrefix([]byte(h2Preface), b) {
			i := bytes.IndexByte(b, ' ')
			if i < 0 {
				if !upperToken(b) || len(b) > 20 {
					return protoTCP, nil
				}
			} else if i > 0 && upperToken(b[:i]) {
				return protoHTTP1, nil
			} else {
				return protoTCP, nil
			}
		}
		n = nextPeek(br, len(b))
		if n > br.Size() {
			return protoTCP, nil
		}
	}
}

func upperToken(b []byte) bool {
	for _, c := range b {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// serveStream sniffs the stream and hands it to the HTTP codecs or to the L4 pass-through.
func (p *Proxy) serveStream(ctx context.Context, d *downstream, s *hbone.Stream) {
	br := bufio.NewReaderSize(s, 4<<10)
	declared := d.appProtocol()
	// Server-first protocols send nothing until the server speaks: a silent stream to a
	// port not declared HTTP goes through as opaque TCP after SniffTimeout.
	if declared == configv1.AppProtocol_TCP {
		_ = s.SetReadDeadline(time.Now().Add(p.cfg.SniffTimeout))
	}
	proto, err := sniff(br)
	_ = s.SetReadDeadline(time.Time{})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !isTimeout(err) {
		if !errors.Is(err, io.EOF) {
			p.log.Debug("sniff failed", "authority", d.authority.String(), "err", err)
		}
		// The client went away before it said anything: nothing to forward.
		if br.Buffered() == 0 {
			return
		}
	}
	c := &bufConn{HalfCloser: s, r: br}
	switch proto {
	case protoHTTP2:
		p.serveH2(ctx, d, c)
	case protoHTTP1:
		p.serveHTTP1(ctx, d, c)
	default:
		p.serveL4(ctx, d, c)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// atLeast returns br, or, when br holds fewer than n bytes, a reader of n bytes stacked on
// br, which loses nothing br has buffered. A connection reads through a small buffer and
// grows it only for the rare request head or TLS hello that needs more.
func atLeast(br *bufio.Reader, n int) *bufio.Reader {
	if br.Size() >= n {
		return br
	}
	return bufio.NewReaderSize(br, n)
}

// bufConn is a stream whose first bytes were peeked into r (which may be replaced by a
// larger reader stacked on it: atLeast).
type bufConn struct {
	hbone.HalfCloser
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// nextPeek is how much to peek next: what is buffered already, or one byte more than was
// seen when nothing more is, so that Peek waits only when it has to.
func nextPeek(br *bufio.Reader, seen int) int {
	if br.Buffered() > seen {
		return br.Buffered()
	}
	return seen + 1
}
