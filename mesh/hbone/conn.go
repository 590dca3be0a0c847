package hbone

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxDataPayload is the largest DATA payload we send: with its 9-byte header a frame fills
// exactly four TLS records (2^14 bytes of plaintext each), so a bulk transfer costs one
// socket read and one TLS write per 64 KiB, as a raw TLS tunnel does. A peer that allows
// only the default 16 KiB frames gets 16 KiB frames.
const maxDataPayload = 4<<14 - 9

// conn is one HTTP/2 connection over TLS, either side. The read loop goroutine owns the
// frame reader; writes go through wmu; shared state is under mu. Lock order: mu before a
// stream's mu; wmu is never taken while holding mu.
type conn struct {
	nc     net.Conn
	raw    *rawConn // the socket under nc's TLS, when it is one
	server bool
	cfg    ConnConfig
	peer   spiffeid.ID
	log    *slog.Logger

	fr *http2.Framer

	wmu  sync.Mutex
	bw   *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu             sync.Mutex
	streams        map[uint32]*Stream
	nextID         uint32 // client: the next stream ID to open
	lastPeerID     uint32 // server: the highest stream ID the peer opened
	reserved       int    // client: slots promised by the pool, not yet opened
	handlers       int    // server: handler goroutines running
	handlerWG      sync.WaitGroup
	readDone       chan struct{} // closed when the read loop, the only spawner of handlers, returns
	peerMaxStreams uint32
	peerInitWindow int32
	peerMaxFrame   uint32
	sendWindow     int64 // connection-level credit the peer gave us
	recvWindow     int64 // connection-level credit we still grant the peer
	recvPending    int64 // bytes consumed by readers, not yet returned to the peer
	goingAway      bool
	closed         bool
	err            error
	idleSince      time.Time
	resetTimes     []time.Time
	flood          floodGuard // read loop only

	framesRead atomic.Uint64
	pingAck    chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	onClose    func(*conn)
	newStream  func(*Stream, *Request) // server: called for each accepted CONNECT
}

func newConn(nc net.Conn, server bool, cfg ConnConfig, peer spiffeid.ID) *conn {
	c := &conn{
		nc:             nc,
		server:         server,
		cfg:            cfg,
		peer:           peer,
		log:            cfg.Logger.With("peer", peer.String(), "remote", nc.RemoteAddr().String()),
		bw:             bufio.NewWriterSize(nc, 32<<10),
		streams:        make(map[uint32]*Stream),
		nextID:         1,
		peerMaxStreams: 100, // until the peer's SETTINGS say otherwise (RFC 9113 recommends ≥100)
		peerInitWindow: 65535,
		peerMaxFrame:   16384,
		sendWindow:     65535,
		recvWindow:     65535,
		idleSince:      time.Now(),
		pingAck:        make(chan struct{}, 1),
		done:           make(chan struct{}),
		readDone:       make(chan struct{}),
	}
	if tc, ok := nc.(*tls.Conn); ok {
		c.raw, _ = tc.NetConn().(*rawConn)
	}
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 64<<10))
	c.fr.SetReuseFrames()
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = cfg.MaxHeaderListSize
	c.fr.SetMaxReadFrameSize(1 << 20)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// handshake exchanges the connection preface and our SETTINGS; the peer's SETTINGS are
// applied by the read loop. It must be called before run.
func (c *conn) handshake() error {
	_ = c.nc.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	defer c.nc.SetDeadline(time.Time{})
	if c.server {
		var preface [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(c.nc, preface[:]); err != nil {
			return fmt.Errorf("read client preface: %w", err)
		}
		if string(preface[:]) != http2.ClientPreface {
			return errors.New("bad client preface")
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.server {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
	}
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: uint32(c.cfg.StreamWindow)},
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderListSize},
		{ID: http2.SettingMaxFrameSize, Val: 1 << 20},
	}
	if c.server {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxStreams})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	if inc := c.cfg.ConnWindow - 65535; inc > 0 {
		if err := c.fr.WriteWindowUpdate(0, uint32(inc)); err != nil {
			return err
		}
	}
	c.recvWindow = int64(c.cfg.ConnWindow)
	if err := c.bw.Flush(); err != nil {
		return err
	}
	// The first frame from the peer must be SETTINGS (RFC 9113 §3.4).
	f, err := c.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("read peer settings: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("peer sent %v before SETTINGS", f.Header().Type)
	}
	if err := c.applySettingsLocked(sf); err != nil {
		return fmt.Errorf("peer settings: %w", err)
	}
	if err := c.fr.WriteSettingsAck(); err != nil {
		return err
	}
	return c.bw.Flush()
}

// run starts the read loop and the keep-alive loop; both end when the connection closes.
func (c *conn) run() {
	go c.readLoop()
	go c.keepalive()
}

func (c *conn) readLoop() {
	var err error
	defer close(c.readDone)
	defer func() { c.closeWithError(err) }()
	for {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				err = nil
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAway(http2.ErrCode(ce), "frame error")
				err = &Error{Kind: KindProtocol, Err: err}
			}
			return
		}
		c.framesRead.Add(1)
		if what := c.flood.check(f); what != "" {
			c.goAway(http2.ErrCodeEnhanceYourCalm, what)
			err = &Error{Kind: KindProtocol, Reason: "peer sent a " + what}
			return
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.MetaHeadersFrame:
			err = c.onHeaders(f)
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.WindowUpdateFrame:
			err = c.onWindowUpdate(f)
		case *http2.PingFrame:
			err = c.onPing(f)
		case *http2.RSTStreamFrame:
			err = c.onReset(f)
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.PushPromiseFrame:
			err = c.protocolError("PUSH_PROMISE is not allowed")
		}
		if err != nil {
			return
		}
	}
}

func (c *conn) protocolError(msg string) error {
	c.goAway(http2.ErrCodeProtocol, msg)
	return &Error{Kind: KindProtocol, Reason: msg}
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := c.applySettingsLocked(f)
	c.mu.Unlock()
	if err != nil {
		return c.protocolError(err.Error())
	}
	return c.writeFrame(func() error { return c.fr.WriteSettingsAck() })
}

// applySettingsLocked applies the peer's SETTINGS. Caller holds mu (or is single-threaded
// in the handshake).
func (c *conn) applySettingsLocked(f *http2.SettingsFrame) error {
	return f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peerInitWindow)
			c.peerInitWindow = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				st.signalSendable()
			}
		}
		return nil
	})
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	overflow := false
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		overflow = c.sendWindow > 1<<31-1
		for _, st := range c.streams {
			st.signalSendable()
		}
	} else if st := c.streams[f.StreamID]; st != nil {
		st.sendWindow += int64(f.Increment)
		st.signalSendable()
	}
	c.mu.Unlock()
	if overflow {
		return c.protocolError("connection window overflow")
	}
	return nil
}

func (c *conn) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		select {
		case c.pingAck <- struct{}{}:
		default:
		}
		return nil
	}
	data := f.Data
	return c.writeFrame(func() error { return c.fr.WritePing(true, data) })
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goingAway = true
	var orphans []*Stream
	for id, st := range c.streams {
		if id > f.LastStreamID && id%2 == 1 == !c.server {
			orphans = append(orphans, st)
		}
	}
	c.mu.Unlock()
	for _, st := range orphans {
		st.fail(&Error{Kind: KindDial, Err: errUnprocessed})
	}
	c.log.Debug("hbone peer going away", "code", f.ErrCode, "last_stream", f.LastStreamID)
}

func (c *conn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	st := c.streams[f.StreamID]
	c.mu.Unlock()
	if st != nil && st.onPeerReset(f.ErrCode) {
		c.removeStream(st)
		return nil
	}
	if st != nil {
		c.removeStream(st)
	}
	// Count resets in a sliding window; a peer that opens and cancels streams faster than
	// we can retire their handlers is attacking the connection (rapid reset). Only a client
	// can do that: a server resetting the streams a client opened (a waypoint answering many
	// short requests, a ztunnel refusing by policy) costs the client nothing, so a client
	// does not count them.
	if !c.server {
		return nil
	}
	now := time.Now()
	c.mu.Lock()
	cut := 0
	for cut < len(c.resetTimes) && now.Sub(c.resetTimes[cut]) > c.cfg.ResetWindow {
		cut++
	}
	c.resetTimes = append(c.resetTimes[cut:], now)
	tooMany := len(c.resetTimes) > c.cfg.MaxResets
	c.mu.Unlock()
	if tooMany {
		c.goAway(http2.ErrCodeEnhanceYourCalm, "too many stream resets")
		return &Error{Kind: KindProtocol, Reason: "peer reset too many streams"}
	}
	return nil
}

func (c *conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	c.mu.Lock()
	c.recvWindow -= n
	if c.recvWindow < 0 {
		c.mu.Unlock()
		c.goAway(http2.ErrCodeFlowControl, "connection window exceeded")
		return &Error{Kind: KindProtocol, Reason: "peer exceeded the connection window"}
	}
	st := c.streams[f.StreamID]
	c.mu.Unlock()
	data := f.Data()
	if padding := n - int64(len(data)); padding > 0 {
		c.consumed(nil, int(padding))
	}
	if st == nil {
		// Data for a stream we already closed: its bytes still count against the
		// connection window, so return them.
		c.consumed(nil, len(data))
		if !c.validStreamID(f.StreamID) {
			return c.protocolError("DATA on an idle stream")
		}
		return nil
	}
	if err := st.deliver(data, f.StreamEnded()); err != nil {
		c.consumed(nil, len(data))
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

// validStreamID reports whether id belongs to a stream that was ever opened.
func (c *conn) validStreamID(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server {
		return id <= c.lastPeerID
	}
	return id < c.nextID
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	if !c.server {
		c.mu.Lock()
		st := c.streams[f.StreamID]
		c.mu.Unlock()
		if st == nil {
			return nil // a response for a stream we gave up on
		}
		st.onResponse(f)
		return nil
	}
	id := f.StreamID
	c.mu.Lock()
	if id%2 == 0 || id <= c.lastPeerID {
		known := c.streams[id] != nil
		c.mu.Unlock()
		if known {
			return c.protocolError("trailers are not part of HBONE")
		}
		return c.protocolError("stream ID not increasing")
	}
	c.lastPeerID = id
	switch {
	case c.goingAway || c.closed:
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeRefusedStream)
		return nil
	case uint32(len(c.streams)) >= c.cfg.MaxStreams || uint32(c.handlers) >= c.cfg.MaxStreams:
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := c.newStreamLocked(id)
	c.handlers++
	c.handlerWG.Add(1)
	c.mu.Unlock()

	req, err := parseRequest(f)
	if f.StreamEnded() {
		st.remoteEnded = true
		st.rEOF = true
	}
	if err != nil {
		go func() {
			defer c.handlerDone()
			_ = st.respond(400, err.Error())
			st.Close()
		}()
		return nil
	}
	req.stream = st
	go func() {
		defer c.handlerDone()
		c.newStream(st, req)
	}()
	return nil
}

func (c *conn) handlerDone() {
	c.mu.Lock()
	c.handlers--
	c.mu.Unlock()
	c.handlerWG.Done()
}

func (c *conn) newStreamLocked(id uint32) *Stream {
	st := newStream(c, id)
	st.sendWindow = int64(c.peerInitWindow)
	st.recvWindow = c.cfg.StreamWindow
	c.streams[id] = st
	return st
}

// reserve promises the pool a stream slot; it fails when the connection is full or dying.
func (c *conn) reserve(limit uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	max := min(limit, c.peerMaxStreams)
	if c.closed || c.goingAway || uint32(len(c.streams)+c.reserved) >= max || c.nextID > 1<<31-2 {
		return false
	}
	c.reserved++
	return true
}

// openStream sends a request HEADERS on a reserved slot and returns the new stream; the
// caller waits for its response.
func (c *conn) openStream(fields []hpack.HeaderField) (*Stream, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goingAway {
		err := c.err
		c.mu.Unlock()
		return nil, &Error{Kind: KindDial, Reason: "connection is closing", Err: err}
	}
	id := c.nextID
	c.nextID += 2
	st := c.newStreamLocked(id)
	c.mu.Unlock()
	if err := c.writeHeadersLocked(id, fields, false); err != nil {
		c.closeWithError(err)
		return nil, &Error{Kind: KindDial, Err: err}
	}
	return st, nil
}

func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		chunk := block
		if len(chunk) > 16384 {
			chunk = chunk[:16384]
		}
		block = block[len(chunk):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: end, EndHeaders: len(block) == 0})
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
		first = false
	}
	return c.flushLocked()
}

// writeFrame runs one Framer write under wmu and flushes it.
func (c *conn) writeFrame(write func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := write(); err != nil {
		return err
	}
	return c.flushLocked()
}

func (c *conn) flushLocked() error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	if err := c.gathered(c.bw.Buffered(), c.bw.Flush); err != nil {
		go c.closeWithError(fmt.Errorf("write: %w", err))
		return err
	}
	return nil
}

// writeData sends one DATA frame. frame holds 9 bytes of room for the header followed
// by the payload, which must fit in maxDataPayload and in the flow-control credit the
// caller already took. Header and payload go out in one write, hence one TLS record.
func (c *conn) writeData(id uint32, frame []byte, end bool) error {
	n := len(frame) - 9
	frame[0], frame[1], frame[2] = byte(n>>16), byte(n>>8), byte(n)
	frame[3] = byte(http2.FrameData)
	frame[4] = 0
	if end {
		frame[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(frame[5:9], id)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.bw.Buffered() > 0 {
		return c.gathered(c.bw.Buffered()+len(frame), func() error {
			if _, err := c.bw.Write(frame); err != nil {
				return err
			}
			return c.flushLocked()
		})
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	if err := c.gathered(len(frame), func() error { _, err := c.nc.Write(frame); return err }); err != nil {
		go c.closeWithError(fmt.Errorf("write: %w", err))
		return err
	}
	return nil
}

// gatherAbove is the size of a write to the TLS connection above which its records are
// gathered into one socket write: more than one record's plaintext. crypto/tls writes each
// record on its own, so a full DATA frame would take four writes, and each write into a veth
// pair runs the receiver's network stack and may wake it, which costs more than copying the
// records once more. A request-sized write is one record and goes out as it is.
const gatherAbove = 1 << 14

// gathered runs write, a write of n bytes to the TLS connection, with its records gathered
// into one socket write when n may take more than one record.
func (c *conn) gathered(n int, write func() error) error {
	if c.raw == nil || n <= gatherAbove {
		return write()
	}
	return c.raw.gatherWrites(write)
}

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 9+maxDataPayload); return &b }}

// takeSendWindow blocks until the stream and the connection both have credit, then takes
// up to want bytes of it (never more than one frame).
func (c *conn) takeSendWindow(st *Stream, want int) (int, error) {
	for {
		c.mu.Lock()
		if c.closed {
			err := c.err
			c.mu.Unlock()
			return 0, connClosedError(err)
		}
		if err := st.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		n := int64(min(want, maxDataPayload, int(c.peerMaxFrame)))
		n = min(n, st.sendWindow, c.sendWindow)
		if n > 0 {
			st.sendWindow -= n
			c.sendWindow -= n
			c.mu.Unlock()
			return int(n), nil
		}
		c.mu.Unlock()
		select {
		case <-st.sendable:
		case <-st.wdl.wait():
			return 0, timeoutError{}
		case <-c.done:
		}
	}
}

// consumed returns credit for n bytes a reader took out of st (nil for connection-only
// credit), sending WINDOW_UPDATEs once a quarter of a window has accumulated.
func (c *conn) consumed(st *Stream, n int) {
	if n <= 0 {
		return
	}
	var streamInc, connInc uint32
	if st != nil {
		st.mu.Lock()
		if !st.remoteEnded {
			st.recvPending += int32(n)
			if st.recvPending >= c.cfg.StreamWindow/4 {
				streamInc = uint32(st.recvPending)
				st.recvWindow += st.recvPending
				st.recvPending = 0
			}
		}
		st.mu.Unlock()
	}
	c.mu.Lock()
	c.recvPending += int64(n)
	if c.recvPending >= int64(c.cfg.ConnWindow/4) {
		connInc = uint32(c.recvPending)
		c.recvWindow += c.recvPending
		c.recvPending = 0
	}
	c.mu.Unlock()
	if streamInc == 0 && connInc == 0 {
		return
	}
	_ = c.writeFrame(func() error {
		if connInc > 0 {
			if err := c.fr.WriteWindowUpdate(0, connInc); err != nil {
				return err
			}
		}
		if streamInc > 0 {
			return c.fr.WriteWindowUpdate(st.id, streamInc)
		}
		return nil
	})
}

func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil {
		st.fail(errStreamClosed)
		c.removeStream(st)
	}
	_ = c.writeFrame(func() error { return c.fr.WriteRSTStream(id, code) })
}

func (c *conn) removeStream(st *Stream) {
	c.mu.Lock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		if len(c.streams)+c.reserved == 0 {
			c.idleSince = time.Now()
		}
	}
	c.mu.Unlock()
}

// goAway tells the peer no new streams will be accepted.
func (c *conn) goAway(code http2.ErrCode, reason string) {
	c.mu.Lock()
	c.goingAway = true
	last := c.lastPeerID
	c.mu.Unlock()
	_ = c.writeFrame(func() error { return c.fr.WriteGoAway(last, code, []byte(reason)) })
}

// keepalive probes a quiet connection with PING and closes it when the peer is gone or
// when it has carried no stream for IdleTimeout.
func (c *conn) keepalive() {
	interval := min(c.cfg.PingInterval, c.cfg.IdleTimeout)
	t := time.NewTicker(interval)
	defer t.Stop()
	last := c.framesRead.Load()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		idle := len(c.streams)+c.reserved == 0 && time.Since(c.idleSince) >= c.cfg.IdleTimeout
		c.mu.Unlock()
		if idle {
			c.goAway(http2.ErrCodeNo, "idle")
			c.closeWithError(errIdle)
			return
		}
		if now := c.framesRead.Load(); now != last {
			last = now
			continue
		}
		var data [8]byte
		_, _ = rand.Read(data[:])
		if err := c.writeFrame(func() error { return c.fr.WritePing(false, data) }); err != nil {
			return
		}
		timer := time.NewTimer(c.cfg.PingTimeout)
		select {
		case <-c.pingAck:
			timer.Stop()
			last = c.framesRead.Load()
		case <-timer.C:
			c.closeWithError(errPingTimeout)
			return
		case <-c.done:
			timer.Stop()
			return
		}
	}
}

var (
	errIdle        = errors.New("hbone: connection idle")
	errPingTimeout = errors.New("hbone: peer did not answer PING")
)

func connClosedError(cause error) error {
	if cause == nil {
		return errConnClosed
	}
	return fmt.Errorf("%w: %w", errConnClosed, cause)
}

// closeWithError tears the connection down and fails every stream on it.
func (c *conn) closeWithError(err error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		c.err = err
		streams := make([]*Stream, 0, len(c.streams))
		for _, st := range c.streams {
			streams = append(streams, st)
		}
		c.mu.Unlock()
		close(c.done)
		_ = c.nc.Close()
		for _, st := range streams {
			st.fail(connClosedError(err))
		}
		if c.onClose != nil {
			c.onClose(c)
		}
	})
}

// shutdown stops new streams and closes the connection once the open ones are done or ctx
// ends, whichever is first.
func (c *conn) shutdown(done <-chan struct{}) {
	c.goAway(http2.ErrCodeNo, "shutdown")
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		c.mu.Lock()
		n := len(c.streams) + c.handlers
		c.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-t.C:
			continue
		case <-done:
		case <-c.done:
		}
		break
	}
	c.closeWithError(errConnClosed)
}
