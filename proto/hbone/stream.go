package hbone

import (
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Stream is one tunnelled TCP connection: a net.Conn whose CloseWrite sends END_STREAM, so
// a half-close crosses the tunnel while the other direction keeps flowing.
type Stream struct {
	c  *conn
	id uint32

	// Receive side, under mu.
	mu          sync.Mutex
	rbuf        []byte
	roff        int
	spare       []byte // the other buffer of WriteTo's pair
	rEOF        bool   // the peer's END_STREAM arrived (data may still be buffered)
	rErr        error  // terminal error: reset, connection loss, local Close
	recvWindow  int32
	recvPending int32
	remoteEnded bool
	readable    chan struct{}
	rdl         *deadline

	// Send side. sendWindow is under c.mu; wlock serialises writers so frames of one
	// Write stay in order.
	wlock      sync.Mutex
	sendWindow int64
	localEnded bool // under mu
	sendable   chan struct{}
	wdl        *deadline

	// Client side: the CONNECT response.
	respOnce sync.Once
	resp     chan struct{}
	status   int
	reason   string

	closeOnce sync.Once
}

func newStream(c *conn, id uint32) *Stream {
	return &Stream{
		c:        c,
		id:       id,
		readable: make(chan struct{}, 1),
		sendable: make(chan struct{}, 1),
		resp:     make(chan struct{}),
		rdl:      newDeadline(),
		wdl:      newDeadline(),
	}
}

// PeerIdentity is the SPIFFE identity the other end of the tunnel proved in its TLS
// handshake.
func (s *Stream) PeerIdentity() spiffeid.ID { return s.c.peer }

// LocalAddr and RemoteAddr are those of the underlying TLS connection.
func (s *Stream) LocalAddr() net.Addr  { return s.c.nc.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

func (s *Stream) SetDeadline(t time.Time) error {
	s.rdl.set(t)
	s.wdl.set(t)
	return nil
}
func (s *Stream) SetReadDeadline(t time.Time) error  { s.rdl.set(t); return nil }
func (s *Stream) SetWriteDeadline(t time.Time) error { s.wdl.set(t); return nil }

func (s *Stream) signalReadable() {
	select {
	case s.readable <- struct{}{}:
	default:
	}
}

func (s *Stream) signalSendable() {
	select {
	case s.sendable <- struct{}{}:
	default:
	}
}

// deliver appends received DATA; called only by the read loop.
func (s *Stream) deliver(p []byte, end bool) error {
	s.mu.Lock()
	if s.remoteEnded {
		s.mu.Unlock()
		return errStreamClosed
	}
	s.recvWindow -= int32(len(p))
	if s.recvWindow < 0 {
		s.mu.Unlock()
		return errStreamClosed
	}
	if s.rErr != nil {
		// Closed locally; drop the bytes but keep the connection window honest.
		s.mu.Unlock()
		s.c.consumed(nil, len(p))
		return nil
	}
	if s.roff == len(s.rbuf) {
		s.rbuf, s.roff = s.rbuf[:0], 0
	}
	s.rbuf = append(s.rbuf, p...)
	if end {
		s.remoteEnded, s.rEOF = true, true
	}
	local := s.localEnded
	s.mu.Unlock()
	s.signalReadable()
	if end && local {
		s.c.removeStream(s)
	}
	return nil
}

// Read reads tunnelled bytes; it returns io.EOF after the peer's END_STREAM.
func (s *Stream) Read(p []byte) (int, error) {
	for {
		s.mu.Lock()
		if s.roff < len(s.rbuf) {
			n := copy(p, s.rbuf[s.roff:])
			s.roff += n
			if s.roff == len(s.rbuf) && cap(s.rbuf) > 1<<20 {
				s.rbuf, s.roff = nil, 0 // a burst is over: give the memory back
			}
			s.mu.Unlock()
			s.c.consumed(s, n)
			return n, nil
		}
		if s.rErr != nil {
			err := s.rErr
			s.mu.Unlock()
			return 0, err
		}
		if s.rEOF {
			s.mu.Unlock()
			return 0, io.EOF
		}
		s.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		select {
		case <-s.readable:
		case <-s.rdl.wait():
			return 0, timeoutError{}
		}
	}
}

// WriteTo hands buffered data to w without an intermediate copy; io.Copy uses it. The
// stream keeps two buffers: while w writes one, the read loop fills the other.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		s.mu.Lock()
		if s.roff < len(s.rbuf) {
			chunk := s.rbuf[s.roff:]
			s.rbuf, s.roff, s.spare = s.spare[:0], 0, nil
			s.mu.Unlock()
			n, err := w.Write(chunk)
			total += int64(n)
			s.c.consumed(s, len(chunk))
			if err != nil {
				return total, err
			}
			s.mu.Lock()
			if cap(chunk) <= 1<<20 {
				s.spare = chunk[:0]
			}
			s.mu.Unlock()
			continue
		}
		if s.rErr != nil {
			err := s.rErr
			s.mu.Unlock()
			return total, err
		}
		if s.rEOF {
			s.mu.Unlock()
			return total, nil
		}
		s.mu.Unlock()
		select {
		case <-s.readable:
		case <-s.rdl.wait():
			return total, timeoutError{}
		}
	}
}

// Write sends p as DATA frames, blocking on flow control.
func (s *Stream) Write(p []byte) (int, error) {
	s.wlock.Lock()
	defer s.wlock.Unlock()
	written := 0
	for len(p) > 0 {
		n, err := s.c.takeSendWindow(s, len(p))
		if err != nil {
			return written, err
		}
		if err := s.c.writeData(s.id, p[:n], false); err != nil {
			return written, &Error{Kind: KindDial, Err: err}
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// writeErrLocked reports why the stream can no longer send. Caller holds c.mu.
func (s *Stream) writeErrLocked() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.localEnded:
		return errWriteClosed
	case s.rErr != nil:
		return s.rErr
	}
	return nil
}

// CloseWrite sends END_STREAM: the peer reads EOF, and this side can still read.
func (s *Stream) CloseWrite() error {
	s.wlock.Lock()
	defer s.wlock.Unlock()
	s.mu.Lock()
	if s.localEnded || s.rErr != nil {
		s.mu.Unlock()
		return nil
	}
	s.localEnded = true
	remote := s.remoteEnded
	s.mu.Unlock()
	err := s.c.writeData(s.id, nil, true)
	if remote {
		s.c.removeStream(s)
	}
	return err
}

// Close ends the stream in both directions. Unread data from the peer makes it a reset
// (RST_STREAM CANCEL), as closing a TCP socket with unread data sends RST; otherwise the
// write side is ended gracefully.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		local, remote, failed := s.localEnded, s.remoteEnded, s.rErr != nil
		s.localEnded = true
		if s.rErr == nil {
			s.rErr = errStreamClosed
		}
		s.mu.Unlock()
		s.signalReadable()
		s.signalSendable()
		switch {
		case failed:
		case !remote:
			_ = s.c.writeFrame(func() error { return s.c.fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
		case !local:
			s.wlock.Lock()
			_ = s.c.writeData(s.id, nil, true)
			s.wlock.Unlock()
		}
		s.c.removeStream(s)
	})
	return nil
}

// fail ends the stream with err for both readers and writers.
func (s *Stream) fail(err error) {
	s.mu.Lock()
	if s.rErr == nil {
		s.rErr = err
	}
	s.mu.Unlock()
	s.signalReadable()
	s.signalSendable()
	s.respOnce.Do(func() {
		s.status = 0
		s.reason = err.Error()
		close(s.resp)
	})
}

// onResponse records the CONNECT response; called by the read loop of a client conn.
func (s *Stream) onResponse(f *http2.MetaHeadersFrame) {
	status, _ := strconv.Atoi(f.PseudoValue("status"))
	if f.Truncated || status < 100 || status > 599 {
		s.c.resetStream(s.id, http2.ErrCodeProtocol)
		return
	}
	if status >= 100 && status < 200 {
		return // informational; the final response follows
	}
	if f.StreamEnded() {
		s.mu.Lock()
		s.remoteEnded, s.rEOF = true, true
		s.mu.Unlock()
		s.signalReadable()
	}
	s.respOnce.Do(func() {
		s.status = status
		for _, hf := range f.RegularFields() {
			if hf.Name == "x-hbone-reason" {
				s.reason = hf.Value
			}
		}
		close(s.resp)
	})
}

// respond writes the server's CONNECT response. A non-200 status ends the stream.
func (s *Stream) respond(status int, reason string) error {
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	if reason != "" {
		fields = append(fields, hpack.HeaderField{Name: "x-hbone-reason", Value: sanitizeReason(reason)})
	}
	end := status != 200
	s.c.wmu.Lock()
	err := s.c.writeHeadersLocked(s.id, fields, end)
	s.c.wmu.Unlock()
	if end {
		s.mu.Lock()
		s.localEnded = true
		s.mu.Unlock()
	}
	return err
}

// sanitizeReason keeps a reason header printable and short.
func sanitizeReason(r string) string {
	b := make([]byte, 0, min(len(r), 256))
	for i := 0; i < len(r) && len(b) < 256; i++ {
		if c := r[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "hbone: i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var _ net.Conn = (*Stream)(nil)
