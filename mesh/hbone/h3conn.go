package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// h3conn is one QUIC connection carrying HBONE over HTTP/3, client or server side. Its
// control stream and the peer's unidirectional streams are served by goroutines it owns
// (wg); everything ends when the QUIC connection does.
type h3conn struct {
	qc     *quic.Conn
	server bool
	cfg    ConnConfig
	peer   spiffeid.ID
	log    *slog.Logger
	// closer releases what the client opened for this connection alone (its transport and
	// UDP socket); nil on the server.
	closer io.Closer
	// shield, when set, is the socket's loss shield, which this connection switches on
	// for its peer while it measures loss (h3loss.go).
	shield *shieldConn

	settings chan struct{} // closed when the peer's SETTINGS arrived
	ctrlMu   sync.Mutex
	ctrl     *quic.SendStream

	mu                         sync.Mutex
	active                     uint32 // client: reserved and open streams; server: running handlers
	goingAway                  bool   // the peer sent GOAWAY (client) or we are shutting down (server)
	idle                       *time.Timer
	resets                     []time.Time // server: streams the peer abandoned before HEADERS
	nextStream                 uint64      // server: the lowest request stream ID not yet accepted
	ctrlSeen, encSeen, decSeen bool
	err                        error
	onClose                    func(*h3conn)
	closeOnce                  sync.Once

	wg sync.WaitGroup
}

func newH3Conn(qc *quic.Conn, server bool, cfg ConnConfig, peer spiffeid.ID) *h3conn {
	c := &h3conn{qc: qc, server: server, cfg: cfg, peer: peer, settings: make(chan struct{}),
		log: cfg.Logger.With("peer", peer.String(), "remote", qc.RemoteAddr().String(), "proto", ProtocolH3.String())}
	return c
}

// start opens our control stream with SETTINGS, serves the peer's unidirectional streams
// and watches the connection's end.
func (c *h3conn) start() error {
	ctrl, err := c.qc.OpenUniStream()
	if err != nil {
		return fmt.Errorf("open control stream: %w", err)
	}
	b := quicvarint.Append(nil, streamControl)
	b = appendSettings(b, c.cfg.MaxHeaderListSize)
	if _, err := ctrl.Write(b); err != nil {
		return fmt.Errorf("write SETTINGS: %w", err)
	}
	c.ctrl = ctrl
	c.mu.Lock()
	c.idle = time.AfterFunc(c.cfg.IdleTimeout, c.idleCheck)
	c.mu.Unlock()
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		for {
			rs, err := c.qc.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.serveUni(rs)
			}()
		}
	}()
	go func() {
		defer c.wg.Done()
		<-c.qc.Context().Done()
		c.finish(context.Cause(c.qc.Context()))
	}()
	if c.shield != nil && c.cfg.H3LossThreshold > 0 {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.watchLoss()
		}()
	}
	return nil
}

// serveUni reads the type of a peer's unidirectional stream and serves it.
func (c *h3conn) serveUni(rs *quic.ReceiveStream) {
	br := byteReader{r: rs}
	_ = rs.SetReadDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	typ, err := quicvarint.Read(&br)
	if err != nil {
		rs.CancelRead(quic.StreamErrorCode(h3StreamCreationError))
		return
	}
	_ = rs.SetReadDeadline(time.Time{})
	c.mu.Lock()
	var dup bool
	switch typ {
	case streamControl:
		dup, c.ctrlSeen = c.ctrlSeen, true
	case streamQPACKEncoder:
		dup, c.encSeen = c.encSeen, true
	case streamQPACKDecoder:
		dup, c.decSeen = c.decSeen, true
	}
	c.mu.Unlock()
	if dup {
		c.fail(connErr(h3StreamCreationError, "second stream of type 0x%x", typ))
		return
	}
	switch typ {
	case streamControl:
		err := c.serveControl(&br)
		if errors.Is(err, io.EOF) {
			err = connErr(h3ClosedCriticalStream, "control stream closed")
		}
		var he *h3Error
		if errors.As(err, &he) {
			c.fail(he)
		}
	case streamQPACKEncoder, streamQPACKDecoder:
		// With a table capacity of 0 neither side has instructions worth reading; the
		// bytes are discarded as they arrive (flow control bounds them).
		_, _ = io.Copy(io.Discard, rs)
	case streamPush:
		// We never send MAX_PUSH_ID, so a push stream is an error (RFC 9114 §6.2.2); a
		// client may not open one at all.
		code := uint64(h3IDError)
		if c.server {
			code = h3StreamCreationError
		}
		c.fail(connErr(code, "push stream"))
	default:
		rs.CancelRead(quic.StreamErrorCode(h3StreamCreationError))
	}
}

// serveControl reads the peer's control stream: SETTINGS first, then GOAWAY and frames we
// ignore. It returns when the stream or the connection ends.
func (c *h3conn) serveControl(br *byteReader) error {
	first := true
	buf := make([]byte, 0, 64)
	for {
		typ, n, err := readFrameHeader(br)
		if err != nil {
			return err
		}
		if first && typ != frameSettings {
			return connErr(h3MissingSettings, "first control frame is 0x%x, not SETTINGS", typ)
		}
		switch {
		case typ == frameSettings || typ == frameGoAway:
			if typ == frameSettings && !first {
				return connErr(h3FrameUnexpected, "second SETTINGS")
			}
			if n > maxControlFrame {
				return connErr(h3ExcessiveLoad, "control frame of %d bytes", n)
			}
			if uint64(cap(buf)) < n {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			if _, err := io.ReadFull(br.r, buf); err != nil {
				return err
			}
			if typ == frameSettings {
				if _, err := parseSettings(buf); err != nil {
					return err
				}
				close(c.settings)
				first = false
				continue
			}
			id, _, err := quicvarint.Parse(buf)
			if err != nil {
				return connErr(h3FrameError, "malformed GOAWAY")
			}
			c.onGoAway(id)
		case typ == frameData || typ == frameHeaders || typ == framePushPromise || reservedH2Frame(typ):
			return connErr(h3FrameUnexpected, "frame 0x%x on the control stream", typ)
		default: // MAX_PUSH_ID, CANCEL_PUSH, unknown: nothing to do
			if _, err := io.CopyN(io.Discard, br.r, int64(n)); err != nil {
				return err
			}
		}
	}
}

// onGoAway stops new streams on a client connection; streams already open finish.
func (c *h3conn) onGoAway(uint64) {
	c.mu.Lock()
	c.goingAway = true
	c.mu.Unlock()
	c.log.Debug("hbone peer sent GOAWAY")
}

// fail closes the connection with an HTTP/3 error.
func (c *h3conn) fail(e *h3Error) {
	c.log.Info("hbone http3 connection error", "err", e.Error())
	_ = c.qc.CloseWithError(quic.ApplicationErrorCode(e.code), e.msg)
}

// reserve claims a stream slot on a client connection.
func (c *h3conn) reserve(limit uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goingAway || c.err != nil || c.active >= limit {
		return false
	}
	c.active++
	c.idle.Stop()
	return true
}

// streamDone releases a slot; the last one arms the idle timer.
func (c *h3conn) streamDone() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active > 0 {
		c.active--
	}
	if c.active == 0 && c.idle != nil {
		c.idle.Reset(c.cfg.IdleTimeout)
	}
}

// idleCheck closes a connection that has carried no stream for IdleTimeout.
func (c *h3conn) idleCheck() {
	c.mu.Lock()
	idle := c.active == 0
	c.mu.Unlock()
	if idle {
		c.log.Debug("hbone connection idle, closing")
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(h3NoError), "idle")
	}
}

// finish runs once the QUIC connection has ended.
func (c *h3conn) finish(cause error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = cause
		}
		if c.idle != nil {
			c.idle.Stop()
		}
		onClose := c.onClose
		c.mu.Unlock()
		if c.closer != nil {
			_ = c.closer.Close()
		}
		if onClose != nil {
			onClose(c)
		}
	})
}

// close ends the connection with H3_NO_ERROR.
func (c *h3conn) close(reason string) {
	_ = c.qc.CloseWithError(quic.ApplicationErrorCode(h3NoError), reason)
}

// goAway tells a client to open no more streams (server shutdown); streams it opens
// anyway are refused with H3_REQUEST_REJECTED.
func (c *h3conn) goAway() {
	c.mu.Lock()
	if c.goingAway {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	next := c.nextStream
	c.mu.Unlock()
	b := appendFrameHeader(nil, frameGoAway, quicvarint.Len(next))
	b = quicvarint.Append(b, next)
	c.ctrlMu.Lock()
	_, _ = c.ctrl.Write(b)
	c.ctrlMu.Unlock()
}

// shutdown sends GOAWAY, waits until the open streams have finished or done is closed,
// then closes the connection.
func (c *h3conn) shutdown(done <-chan struct{}) {
	c.goAway()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c.mu.Lock()
		n := c.active
		c.mu.Unlock()
		if n == 0 || c.qc.Context().Err() != nil {
			break
		}
		select {
		case <-done:
		case <-tick.C:
			continue
		}
		break
	}
	c.close("shutdown")
}

// openStream opens a CONNECT stream on a client connection and waits for the response.
func (c *h3conn) openStream(ctx context.Context, t Target) (*Stream, error) {
	qs, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		c.streamDone()
		return nil, &Error{Kind: KindDial, Err: fmt.Errorf("open http3 stream: %w", err)}
	}
	hs := newH3Stream(c, qs)
	st := &Stream{q: hs}
	stop := context.AfterFunc(ctx, func() { hs.abort(h3RequestCancelled) })
	defer stop()
	if _, err := qs.Write(encodeFields(requestFields(t))); err != nil {
		st.Close()
		return nil, c.dialErr(ctx, err)
	}
	for {
		typ, n, err := readFrameHeader(&hs.br)
		if err != nil {
			st.Close()
			return nil, c.dialErr(ctx, err)
		}
		switch {
		case typ == frameHeaders:
		case typ == frameData || typ == frameSettings || typ == frameGoAway || typ == frameMaxPushID ||
			typ == frameCancelPush || typ == framePushPromise || reservedH2Frame(typ):
			c.fail(connErr(h3FrameUnexpected, "frame 0x%x before the response", typ))
			st.Close()
			return nil, &Error{Kind: KindProtocol, Reason: fmt.Sprintf("frame 0x%x before the response", typ)}
		default:
			if _, err := io.CopyN(io.Discard, qs, int64(n)); err != nil {
				st.Close()
				return nil, c.dialErr(ctx, err)
			}
			continue
		}
		if n > uint64(c.cfg.MaxHeaderListSize) {
			hs.abort(h3ExcessiveLoad)
			st.Close()
			return nil, &Error{Kind: KindProtocol, Reason: "response headers exceed the size limit"}
		}
		block := make([]byte, n)
		if _, err := io.ReadFull(qs, block); err != nil {
			st.Close()
			return nil, c.dialErr(ctx, err)
		}
		fields, err := decodeFields(block, c.cfg.MaxHeaderListSize)
		if err != nil {
			var he *h3Error
			if errors.As(err, &he) {
				c.fail(he)
			}
			hs.abort(h3MessageError)
			st.Close()
			return nil, &Error{Kind: KindProtocol, Err: err}
		}
		status, reason := 0, ""
		for _, f := range fields {
			switch f.Name {
			case ":status":
				status = atoiStatus(f.Value)
			case "x-hbone-reason":
				reason = f.Value
			}
		}
		if status < 100 || status > 599 {
			hs.abort(h3MessageError)
			st.Close()
			return nil, &Error{Kind: KindProtocol, Reason: "invalid :status"}
		}
		if status < 200 {
			continue // 1xx
		}
		if status != 200 {
			st.Close()
			return nil, errorForStatus(status, reason)
		}
		return st, nil
	}
}

func atoiStatus(s string) int {
	if len(s) != 3 {
		return 0
	}
	n := 0
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0
		}
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// dialErr classifies a failure while opening a stream.
func (c *h3conn) dialErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return &Error{Kind: KindDial, Err: ctx.Err()}
	}
	if se, ok := errors.AsType[*quic.StreamError](err); ok && se.Remote {
		return &Error{Kind: KindDial, Err: streamResetError{code: uint32(se.ErrorCode)}}
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote && ae.ErrorCode == h3NoError {
		return &Error{Kind: KindDial, Reason: "peer closed the connection", Err: err}
	}
	return &Error{Kind: KindDial, Err: err}
}
