package hbone

import (
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
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
	// q, when set, carries the stream over HTTP/3 instead; every method hands over to it
	// first, and the HTTP/2 fields below stay unused.
	q *h3stream

	// Receive side, under mu.
	mu      sync.Mutex
	rq      rqueue
	sink    syscall.RawConn // WriteTo's destination, for direct delivery
	sinking bool            // a write to sink is in flight
	sunk    int64           // bytes delivered straight to sink
	// tryWrite's state, used only by the read loop.
	tryFn       func(fd uintptr) bool
	tryBuf      []byte
	tryN        int
	wErr        error // why writing stopped while reading may go on
	rEOF        bool  // the peer's END_STREAM arrived (data may still be buffered)
	rErr        error // terminal error: reset, connection loss, local Close
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
func (s *Stream) PeerIdentity() spiffeid.ID {
	if s.q != nil {
		return s.q.c.peer
	}
	return s.c.peer
}

// Protocol is the tunnel protocol the stream travels on.
func (s *Stream) Protocol() Protocol {
	if s.q != nil {
		return ProtocolH3
	}
	return ProtocolH2
}

// LocalAddr and RemoteAddr are those of the underlying TLS (or QUIC) connection.
func (s *Stream) LocalAddr() net.Addr {
	if s.q != nil {
		return s.q.c.qc.LocalAddr()
	}
	return s.c.nc.LocalAddr()
}

func (s *Stream) RemoteAddr() net.Addr {
	if s.q != nil {
		return s.q.c.qc.RemoteAddr()
	}
	return s.c.nc.RemoteAddr()
}

func (s *Stream) SetDeadline(t time.Time) error {
	if s.q != nil {
		return s.q.SetDeadline(t)
	}
	s.rdl.set(t)
	s.wdl.set(t)
	return nil
}

func (s *Stream) SetReadDeadline(t time.Time) error {
	if s.q != nil {
		return s.q.SetReadDeadline(t)
	}
	s.rdl.set(t)
	return nil
}

func (s *Stream) SetWriteDeadline(t time.Time) error {
	if s.q != nil {
		return s.q.SetWriteDeadline(t)
	}
	s.wdl.set(t)
	return nil
}

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

// deliver hands received DATA to the stream; called only by the read loop. When a
// splice is draining the stream into a socket (WriteTo) and nothing is queued, the bytes
// go straight to that socket without waking another goroutine: on the round-trip path
// that wake-up costs more than the rest of HBONE together.
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
	direct := 0
	if s.sink != nil && !s.sinking && s.rq.len() == 0 && len(p) > 0 {
		s.sinking = true
		sink := s.sink
		s.mu.Unlock()
		direct = s.tryWrite(sink, p)
		s.mu.Lock()
		s.sinking = false
		s.sunk += int64(direct)
		p = p[direct:]
	}
	s.rq.push(p)
	if end {
		s.remoteEnded, s.rEOF = true, true
	}
	local := s.localEnded
	s.mu.Unlock()
	if direct > 0 {
		s.c.consumed(s, direct)
	}
	if len(p) > 0 || end {
		s.signalReadable()
	}
	if end && local {
		s.c.removeStream(s)
	}
	return nil
}

// Quiet reports, without reading, whether nothing has arrived on the stream that its
// reader has not taken: no bytes, no END_STREAM, no reset or loss of the connection. An
// idle stream kept for reuse (the waypoint's upstream HTTP/1.1 connections) that is not
// quiet cannot carry another request. A stream over HTTP/3 cannot tell without reading: it
// reports known false.
func (s *Stream) Quiet() (quiet, known bool) {
	if s.q != nil {
		return false, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rq.len() == 0 && !s.rEOF && s.rErr == nil, true
}

// Read reads tunnelled bytes; it returns io.EOF after the peer's END_STREAM.
func (s *Stream) Read(p []byte) (int, error) {
	if s.q != nil {
		return s.q.Read(p)
	}
	for {
		s.mu.Lock()
		if s.rq.len() > 0 {
			n := s.rq.read(p)
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

// WriteTo drains the stream into w until END_STREAM; io.Copy and Splice use it. When w
// is a socket, the read loop may write to it directly (see deliver); WriteTo writes
// whatever got queued, with one vectored write for all queued pages.
func (s *Stream) WriteTo(w io.Writer) (total int64, err error) {
	if s.q != nil {
		return s.q.WriteTo(w)
	}
	var sink syscall.RawConn
	if sc, ok := w.(syscall.Conn); ok {
		sink, _ = sc.SyscallConn()
	}
	// What the read loop delivers straight to the sink counts too: total is a named result,
	// so that the deferred addition reaches the caller, and the count is taken as the sink
	// goes, so that nothing delivered is left out.
	s.mu.Lock()
	s.sink = sink
	sunkBefore := s.sunk
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.sink = nil
		total += s.sunk - sunkBefore
		s.mu.Unlock()
	}()
	for {
		s.mu.Lock()
		if s.rq.len() > 0 && !s.sinking {
			bufs, n := s.rq.take()
			s.sinking = true
			s.mu.Unlock()
			var m int64
			if sink == nil && len(bufs) > 1 {
				m, err = writeGathered(w, bufs)
			} else {
				vec := net.Buffers(bufs)
				m, err = vec.WriteTo(w)
			}
			release(bufs)
			s.mu.Lock()
			s.sinking = false
			s.mu.Unlock()
			total += m
			s.c.consumed(s, n)
			if err != nil {
				return total, err
			}
			continue
		}
		if s.rErr != nil {
			err := s.rErr
			s.mu.Unlock()
			return total, err
		}
		if s.rEOF && s.rq.len() == 0 && !s.sinking {
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

// writeGathered writes the pages of bufs to w, which is not a socket (a socket takes them
// in one vectored write): gathered into writes of up to a full DATA payload, so that a
// stream spliced into another stream (a waypoint's opaque TCP) sends a 64 KiB frame where
// it would send four 16 KiB pages, each its own frame and two TLS records.
func writeGathered(w io.Writer, bufs [][]byte) (int64, error) {
	bp := frameBufs.Get().(*[]byte)
	defer frameBufs.Put(bp)
	buf := (*bp)[9:]
	var total int64
	k := 0
	flush := func() error {
		m, err := w.Write(buf[:k])
		total += int64(m)
		k = 0
		return err
	}
	for _, b := range bufs {
		for len(b) > 0 {
			c := copy(buf[k:], b)
			k += c
			b = b[c:]
			if k == len(buf) {
				if err := flush(); err != nil {
					return total, err
				}
			}
		}
	}
	if k > 0 {
		if err := flush(); err != nil {
			return total, err
		}
	}
	return total, nil
}

// Write sends p as DATA frames, blocking on flow control.
func (s *Stream) Write(p []byte) (int, error) {
	if s.q != nil {
		return s.q.Write(p)
	}
	s.wlock.Lock()
	defer s.wlock.Unlock()
	bp := frameBufs.Get().(*[]byte)
	defer frameBufs.Put(bp)
	frame := *bp
	written := 0
	for len(p) > 0 {
		n, err := s.c.takeSendWindow(s, len(p))
		if err != nil {
			return written, err
		}
		copy(frame[9:], p[:n])
		if err := s.c.writeData(s.id, frame[:9+n], false); err != nil {
			return written, &Error{Kind: KindDial, Err: err}
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// ReadFrom reads r straight into frame buffers, sparing Write's copy; io.Copy from a
// socket into the stream uses it. From a TCP socket it holds a frame buffer only while
// there are bytes to send: an idle keep-alive connection costs no 64 KiB buffer.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	if s.q != nil {
		return s.q.ReadFrom(r)
	}
	s.wlock.Lock()
	defer s.wlock.Unlock()
	// read returns a frame buffer holding m bytes at [9:], or nil when nothing was read.
	read := func() (*[]byte, int, error) {
		bp := frameBufs.Get().(*[]byte)
		m, err := r.Read((*bp)[9:])
		return bp, m, err
	}
	if tc, ok := r.(*net.TCPConn); ok {
		if rc, ok := newRawConn(tc).(*rawConn); ok {
			read = rc.readFrame
		}
	}
	var total int64
	for {
		bp, m, rerr := read()
		if bp != nil {
			n, err := s.sendRead(*bp, m)
			frameBufs.Put(bp)
			total += n
			if err != nil {
				return total, err
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// sendRead sends the m bytes read into frame[9:], in as many DATA frames as flow control
// requires; each frame's header goes in the 9 bytes just before its payload, already sent
// or unused.
func (s *Stream) sendRead(frame []byte, m int) (int64, error) {
	var sent int64
	for off := 0; off < m; {
		n, err := s.c.takeSendWindow(s, m-off)
		if err != nil {
			return sent, err
		}
		if err := s.c.writeData(s.id, frame[off:off+9+n], false); err != nil {
			return sent, &Error{Kind: KindDial, Err: err}
		}
		off += n
		sent += int64(n)
	}
	return sent, nil
}

// writeErrLocked reports why the stream can no longer send. Caller holds c.mu.
func (s *Stream) writeErrLocked() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.wErr != nil:
		return s.wErr
	case s.localEnded:
		return errWriteClosed
	case s.rErr != nil:
		return s.rErr
	}
	return nil
}

// onPeerReset handles RST_STREAM from the peer and reports whether it was graceful: after
// its END_STREAM a peer may reset with NO_ERROR merely to say it reads no more (RFC 9113
// §8.1; Go's HTTP/2 server does this). Our reads then still end in io.EOF.
func (s *Stream) onPeerReset(code http2.ErrCode) (graceful bool) {
	s.mu.Lock()
	graceful = code == http2.ErrCodeNo && s.remoteEnded
	if graceful {
		s.wErr = errPeerStoppedReading
		s.localEnded = true
		s.mu.Unlock()
		s.signalSendable()
		return true
	}
	s.mu.Unlock()
	s.fail(streamResetError{code: uint32(code)})
	return false
}

// CloseWrite sends END_STREAM: the peer reads EOF, and this side can still read.
func (s *Stream) CloseWrite() error {
	if s.q != nil {
		return s.q.CloseWrite()
	}
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
	var end [9]byte
	err := s.c.writeData(s.id, end[:], true)
	if remote {
		s.c.removeStream(s)
	}
	return err
}

// Close ends the stream in both directions. Unread data from the peer makes it a reset
// (RST_STREAM CANCEL), as closing a TCP socket with unread data sends RST; otherwise the
// write side is ended gracefully.
func (s *Stream) Close() error {
	if s.q != nil {
		return s.q.Close()
	}
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
			var end [9]byte
			s.wlock.Lock()
			_ = s.c.writeData(s.id, end[:], true)
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
	if s.q != nil {
		return s.q.respond(status, reason)
	}
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
