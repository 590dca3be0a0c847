package hbone

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// h3stream is the HTTP/3 body of a Stream: one bidirectional QUIC stream carrying the
// CONNECT exchange and then DATA frames. The QUIC stream's FIN is the half-close; its two
// directions end independently, so CloseWrite is Close of the send side.
type h3stream struct {
	c  *h3conn
	qs *quic.Stream

	// Read side: one reader at a time.
	rmu       sync.Mutex
	br        byteReader
	remaining uint64 // payload bytes left in the current DATA frame
	rEOF      atomic.Bool

	// Write side.
	wmu        sync.Mutex
	localEnded atomic.Bool

	closeOnce sync.Once
}

// h3bufs are ReadFrom's and WriteTo's buffers: h3Reserve bytes of room for a DATA frame
// header in front of the payload, so that a frame goes to QUIC in one write.
const (
	h3Reserve = 16
	h3BufSize = 64 << 10
)

var h3bufs = sync.Pool{New: func() any { b := make([]byte, h3Reserve+h3BufSize); return &b }}

func newH3Stream(c *h3conn, qs *quic.Stream) *h3stream {
	s := &h3stream{c: c, qs: qs}
	s.br.r = qs
	return s
}

// Read reads tunnelled bytes; io.EOF after the peer's FIN on a frame boundary.
func (s *h3stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for s.remaining == 0 {
		if err := s.nextData(); err != nil {
			return 0, err
		}
	}
	if uint64(len(p)) > s.remaining {
		p = p[:s.remaining]
	}
	n, err := s.qs.Read(p)
	s.remaining -= uint64(n)
	if err != nil {
		if err == io.EOF {
			if s.remaining > 0 {
				s.abort(h3FrameError)
				return n, io.ErrUnexpectedEOF
			}
			s.rEOF.Store(true)
			if n > 0 {
				return n, nil
			}
			return 0, io.EOF
		}
		return n, s.mapErr(err)
	}
	return n, nil
}

// nextData reads frame headers up to the next DATA frame; unknown frame types are skipped
// (RFC 9114 §9), anything else known is a connection error.
func (s *h3stream) nextData() error {
	typ, n, err := readFrameHeader(&s.br)
	if err != nil {
		if err == io.EOF {
			s.rEOF.Store(true)
			return io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			s.abort(h3FrameError)
			return err
		}
		return s.mapErr(err)
	}
	switch {
	case typ == frameData:
		s.remaining = n
		return nil
	case typ == frameHeaders:
		// Trailers: HBONE has none. A second HEADERS on a CONNECT stream is malformed.
		s.abort(h3MessageError)
		return &Error{Kind: KindProtocol, Reason: "HEADERS after the CONNECT exchange"}
	case typ == frameSettings, typ == frameGoAway, typ == frameMaxPushID, typ == frameCancelPush,
		typ == framePushPromise, reservedH2Frame(typ):
		s.c.fail(connErr(h3FrameUnexpected, "frame type 0x%x on a request stream", typ))
		return &Error{Kind: KindProtocol, Reason: "unexpected frame 0x" + strconv.FormatUint(typ, 16)}
	}
	if _, err := io.CopyN(io.Discard, s.qs, int64(n)); err != nil {
		return s.mapErr(err)
	}
	return nil
}

// abort resets both directions of a stream the peer broke.
func (s *h3stream) abort(code uint64) {
	s.qs.CancelRead(quic.StreamErrorCode(code))
	s.qs.CancelWrite(quic.StreamErrorCode(code))
}

// mapErr turns QUIC's errors into the package's: a reset stream reads as in HTTP/2, a lost
// connection is KindDial.
func (s *h3stream) mapErr(err error) error {
	if se, ok := errors.AsType[*quic.StreamError](err); ok {
		if se.Remote {
			if se.ErrorCode == h3NoError {
				return errPeerStoppedReading
			}
			return streamResetError{code: uint32(se.ErrorCode)}
		}
		return errStreamClosed
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() && s.c.qc.Context().Err() == nil {
		return timeoutError{}
	}
	if errors.Is(err, quic.ErrStreamClosed) {
		return errWriteClosed
	}
	return &Error{Kind: KindDial, Err: err}
}

// WriteTo drains the stream into w until the peer's FIN.
func (s *h3stream) WriteTo(w io.Writer) (int64, error) {
	bp := h3bufs.Get().(*[]byte)
	defer h3bufs.Put(bp)
	buf := (*bp)[h3Reserve:]
	var total int64
	for {
		n, err := s.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Write sends p as DATA frames, each in one write to QUIC with its header in front. The
// header and the payload written apart left in two packets whenever quic-go's send loop ran
// between the two writes (689 client packets carrying a lone 3-byte header in one 16 KiB
// run of BenchmarkLossyLink, 3 after): one more packet that can be lost and stall the
// stream. The copy is the one HTTP/2's Write makes into its frame buffer.
func (s *h3stream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.localEnded.Load() {
		return 0, errWriteClosed
	}
	bp := h3bufs.Get().(*[]byte)
	defer h3bufs.Put(bp)
	buf := *bp
	written := 0
	for len(p) > 0 {
		n := min(len(p), h3BufSize)
		hl := quicvarint.Len(frameData) + quicvarint.Len(uint64(n))
		start := h3Reserve - hl
		appendFrameHeader(buf[start:start], frameData, n)
		copy(buf[h3Reserve:], p[:n])
		if _, err := s.qs.Write(buf[start : h3Reserve+n]); err != nil {
			return written, s.mapErr(err)
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// ReadFrom reads r into a buffer with room for the frame header in front, so that each
// DATA frame is one write to QUIC.
func (s *h3stream) ReadFrom(r io.Reader) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	bp := h3bufs.Get().(*[]byte)
	defer h3bufs.Put(bp)
	buf := *bp
	var total int64
	for {
		m, rerr := r.Read(buf[h3Reserve:])
		if m > 0 {
			if s.localEnded.Load() {
				return total, errWriteClosed
			}
			hl := quicvarint.Len(frameData) + quicvarint.Len(uint64(m))
			start := h3Reserve - hl
			appendFrameHeader(buf[start:start], frameData, m)
			if _, err := s.qs.Write(buf[start : h3Reserve+m]); err != nil {
				return total, s.mapErr(err)
			}
			total += int64(m)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// CloseWrite sends FIN: the peer reads EOF, and this side can still read.
func (s *h3stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.localEnded.Swap(true) {
		return nil
	}
	_ = s.qs.Close()
	return nil
}

// Close ends both directions. A peer still sending is told to stop (STOP_SENDING), and if
// we had not finished either, our side is reset, as closing a TCP socket with unread data
// resets it; otherwise our side ends with FIN, after everything written.
func (s *h3stream) Close() error {
	s.closeOnce.Do(func() {
		remote := s.rEOF.Load()
		local := s.localEnded.Swap(true)
		switch {
		case !remote && !local:
			s.qs.CancelRead(quic.StreamErrorCode(h3RequestCancelled))
			s.qs.CancelWrite(quic.StreamErrorCode(h3RequestCancelled))
		case !remote:
			s.qs.CancelRead(quic.StreamErrorCode(h3NoError))
		case !local:
			_ = s.qs.Close()
		}
		s.c.streamDone()
	})
	return nil
}

// respond writes the CONNECT response; any status but 200 also ends our side.
func (s *h3stream) respond(status int, reason string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if status != 200 {
		s.localEnded.Store(true)
	}
	if _, err := s.qs.Write(encodeFields(responseFields(status, reason))); err != nil {
		return s.mapErr(err)
	}
	if status != 200 {
		_ = s.qs.Close()
	}
	return nil
}

func (s *h3stream) SetDeadline(t time.Time) error      { return s.qs.SetDeadline(t) }
func (s *h3stream) SetReadDeadline(t time.Time) error  { return s.qs.SetReadDeadline(t) }
func (s *h3stream) SetWriteDeadline(t time.Time) error { return s.qs.SetWriteDeadline(t) }
