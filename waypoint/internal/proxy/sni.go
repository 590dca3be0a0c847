package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// maxClientHello bounds the TLS record read to find a server name (a ClientHello fits one
// record of at most 16 KiB plus its header).
const maxClientHello = 5 + 16<<10

// peekSNI returns the server name of the TLS ClientHello at the head of br, without
// consuming anything; "" when the stream does not start with one. crypto/tls parses it:
// the handshake runs against the peeked bytes and stops as soon as the hello is read. A
// hello longer than br holds is peeked through a larger reader stacked on br (atLeast);
// peekSNI returns the reader the stream is to be read from: br, or that one.
func peekSNI(br *bufio.Reader) (string, *bufio.Reader) {
	hdr, err := br.Peek(5)
	if err != nil || hdr[0] != 0x16 { // not a TLS handshake record
		return "", br
	}
	n := 5 + (int(hdr[3])<<8 | int(hdr[4]))
	if n > maxClientHello {
		return "", br
	}
	br = atLeast(br, n)
	rec, err := br.Peek(n)
	if err != nil {
		return "", br
	}
	var name string
	errGot := errors.New("client hello read")
	conn := tls.Server(&helloConn{r: rec}, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name = h.ServerName
		return nil, errGot
	}})
	_ = conn.Handshake()
	return name, br
}

// helloConn is a net.Conn that reads the peeked record and drops what is written.
type helloConn struct {
	r   []byte
	off int
}

func (c *helloConn) Read(p []byte) (int, error) {
	if c.off >= len(c.r) {
		return 0, io.EOF
	}
	n := copy(p, c.r[c.off:])
	c.off += n
	return n, nil
}
func (c *helloConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *helloConn) Close() error                     { return nil }
func (c *helloConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *helloConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *helloConn) SetDeadline(time.Time) error      { return nil }
func (c *helloConn) SetReadDeadline(time.Time) error  { return nil }
func (c *helloConn) SetWriteDeadline(time.Time) error { return nil }
