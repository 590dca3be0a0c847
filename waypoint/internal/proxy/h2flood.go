package proxy

import (
	"errors"
	"fmt"
	"time"

	"ambit.dev/mesh/hbone"
)

// net/http's HTTP/2 server answers every PING and SETTINGS a client sends and bounds only
// the queue of answers it could not write yet; a client that reads them, or sends empty DATA
// frames, can keep a waypoint busy for free (CVE-2019-9512, -9515, -9518). h2FloodConn
// watches the frames a downstream client sends, without touching them, and ends the
// connection once one of those kinds passes h2FloodFrames within h2FloodWindow — the limit
// mesh/hbone applies to HBONE connections.
const (
	h2FloodFrames = 1000
	h2FloodWindow = 10 * time.Second
	h2PrefaceLen  = 24 // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

var errH2Flood = errors.New("waypoint: client flooded the HTTP/2 connection")

// h2FloodConn is the downstream connection as net/http's HTTP/2 server reads it.
type h2FloodConn struct {
	hbone.HalfCloser
	prefaceLeft int     // preface bytes still to pass
	hdr         [9]byte // the frame header being gathered
	hn          int
	payloadLeft int // payload bytes of the current frame still to pass
	start       time.Time
	counts      [3]int // PING, SETTINGS, empty DATA in the current window
	err         error
}

func newH2FloodConn(c hbone.HalfCloser) *h2FloodConn {
	return &h2FloodConn{HalfCloser: c, prefaceLeft: h2PrefaceLen}
}

func (c *h2FloodConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.HalfCloser.Read(p)
	if what := c.scan(p[:n]); what != "" {
		c.err = fmt.Errorf("%w: %s", errH2Flood, what)
		c.HalfCloser.Close()
		return 0, c.err
	}
	return n, err
}

// scan follows the frame boundaries in b and returns what flood, if any, it completes.
func (c *h2FloodConn) scan(b []byte) string {
	for len(b) > 0 {
		switch {
		case c.prefaceLeft > 0:
			k := min(c.prefaceLeft, len(b))
			c.prefaceLeft -= k
			b = b[k:]
			continue
		case c.payloadLeft > 0:
			k := min(c.payloadLeft, len(b))
			c.payloadLeft -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hn:], b)
		c.hn += k
		b = b[k:]
		if c.hn < len(c.hdr) {
			return ""
		}
		c.hn = 0
		length := int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		c.payloadLeft = length
		if what := c.count(c.hdr[3], c.hdr[4], length); what != "" {
			return what
		}
	}
	return ""
}

// count tallies one frame header; flag 0x1 is ACK on PING and SETTINGS, END_STREAM on DATA.
func (c *h2FloodConn) count(typ, flags byte, length int) string {
	const (
		frameData, frameSettings, framePing = 0x0, 0x4, 0x6
	)
	var i int
	var what string
	switch {
	case typ == framePing && flags&1 == 0:
		i, what = 0, "PING flood"
	case typ == frameSettings && flags&1 == 0:
		i, what = 1, "SETTINGS flood"
	case typ == frameData && length == 0 && flags&1 == 0:
		i, what = 2, "empty DATA flood"
	default:
		return ""
	}
	if now := time.Now(); now.Sub(c.start) > h2FloodWindow {
		c.start, c.counts = now, [3]int{}
	}
	c.counts[i]++
	if c.counts[i] > h2FloodFrames {
		return what
	}
	return ""
}
