package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// serveHTTP1 serves HTTP/1.x requests on c one after the other. The request head is
// checked on the raw bytes before Go's parser sees it, because the parser forgives what a
// proxy must not: a request with both Content-Length and Transfer-Encoding is one two
// servers may frame differently (request smuggling), so it is refused, not repaired.
//
// A connection holds only its small read buffer between requests: the response's write
// buffer is taken from a pool for each response, and a head too long for the read buffer
// is read through a larger one stacked on it (checkHead), which the connection then keeps.
func (p *Proxy) serveHTTP1(ctx context.Context, d *downstream, c *bufConn) {
	for {
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		if _, err := c.r.Peek(1); err != nil {
			return // the client closed (or idled out) between requests
		}
		if !p.serveRequest(ctx, d, c) {
			return
		}
	}
}

// serveRequest reads one request from c, forwards it and writes the response, and reports
// whether the connection may carry another.
func (p *Proxy) serveRequest(ctx context.Context, d *downstream, c *bufConn) bool {
	bw := getResponseWriter(c)
	defer putResponseWriter(bw)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var code int
	var reason string
	if c.r, code, reason = checkHead(c.r, p.cfg.MaxHeaderBytes); code != 0 {
		p.refuse(d, bw, code, reason)
		return false
	}
	req, err := http.ReadRequest(c.r)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		p.refuse(d, bw, http.StatusBadRequest, "malformed request: "+err.Error())
		return false
	}
	if req.ProtoMajor != 1 {
		p.refuse(d, bw, http.StatusHTTPVersionNotSupported, "HTTP version not supported")
		return false
	}
	if req.Header.Get("Upgrade") != "" {
		p.refuse(d, bw, http.StatusNotImplemented, "protocol upgrades are not supported by the waypoint")
		return false
	}
	var cr *continueReader
	if req.Body != nil && req.Body != http.NoBody && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		cr = &continueReader{r: req.Body, w: bw}
		req.Body = cr
	}
	// The request runs under the stream's context, which revocation and the stream's end
	// cancel; what the request starts upstream (each attempt's context, the request
	// timeout's) ends with it in ex.finish, so a context of its own would only cost
	// allocations (with it, every attempt's context took a fresh parent's map of children).
	resp, ex := p.handle(ctx, d, req, false)
	keep := !req.Close && req.Method != http.MethodConnect && ex.flags != flagBadRequest
	if cr != nil {
		// After this the body's reader writes nothing to bw, which goes back to its pool.
		cr.responding()
	}
	n, werr := writeResponse(bw, resp, req, keep)
	resp.Body.Close()
	ex.finish(n, werr)
	if werr != nil || !keep || resp.Close {
		return false
	}
	// The next request starts where this one's body ends. A body the upstream did not
	// read to its end (a denial, an early answer) is not drained here, where the
	// transport may still be reading it: the connection closes instead.
	return req.Body == nil || req.Body == http.NoBody || (ex.reqBody != nil && ex.reqBody.complete(req.ContentLength))
}

// responseWriters holds the write buffers of responses being written: a connection takes
// one per response, so that a thousand idle keep-alive connections hold none.
var responseWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}

func getResponseWriter(w io.Writer) *bufio.Writer {
	bw := responseWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// putResponseWriter returns bw, dropping whatever a failed write left in it.
func putResponseWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	responseWriters.Put(bw)
}

// refuse answers a request the waypoint will not parse or forward, then the connection
// closes: nothing after a bad head can be trusted to start a request.
func (p *Proxy) refuse(d *downstream, bw *bufio.Writer, code int, reason string) {
	body := statusText(code, reason)
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	_ = bw.Flush()
	p.log.Info("http request refused", "src", d.client.String(), "src_principal", d.peer.String(), "dst", d.authority.String(), "status", code, "reason", reason)
	if p.cfg.Metrics != nil {
		ex := &exchange{p: p, d: d, req: &http.Request{Method: "-", URL: nilURL()}, code: code, flags: flagBadRequest, start: time.Now()}
		p.cfg.Metrics.request(ex, 0, int64(len(body)), 0)
	}
}

// checkHead reads the request head (without consuming it) and returns a status other
// than 0 when it must be refused. The head is read into br; one that fills br before it
// ends (br is small: most heads are a few hundred bytes) is read on through a reader of
// limit+5 bytes stacked on br, which loses nothing br holds. checkHead returns the reader
// the request is to be read from: br, or that larger one.
func checkHead(br *bufio.Reader, limit int) (*bufio.Reader, int, string) {
	end := -1
	for n := 1; ; {
		b, err := br.Peek(n)
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			end = i + 4
			break
		}
		if len(b) > limit {
			return br, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request head exceeds %d bytes", limit)
		}
		if errors.Is(err, bufio.ErrBufferFull) && br.Size() < limit+5 {
			br = atLeast(br, limit+5)
			continue
		}
		if err != nil {
			return br, http.StatusBadRequest, "incomplete request head"
		}
		n = min(nextPeek(br, len(b)), limit+5)
	}
	if end > limit+4 {
		return br, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request head exceeds %d bytes", limit)
	}
	head, _ := br.Peek(end)
	// The head's lines are walked in place: the head is read for every request, and a
	// split or a string per line would allocate for each.
	rest := head[:end-4]
	var f framing
	for first := true; ; first = false {
		l, tail, more := bytes.Cut(rest, crlf)
		rest = tail
		if bytes.IndexByte(l, '\n') >= 0 || bytes.IndexByte(l, '\r') >= 0 || bytes.IndexByte(l, 0) >= 0 {
			return br, http.StatusBadRequest, "bare CR, LF or NUL in the request head"
		}
		if !first {
			if code, reason := f.line(l); code != 0 {
				return br, code, reason
			}
		}
		if !more {
			break
		}
	}
	if f.cl > 0 && f.te > 0 {
		return br, http.StatusBadRequest, "request has both Content-Length and Transfer-Encoding"
	}
	return br, 0, ""
}

var crlf = []byte("\r\n")

// framing is what a request head's header lines say about its body: how many
// Content-Length headers (and the value), how many Transfer-Encoding ones.
type framing struct {
	cl, te  int
	clValue []byte
}

// line checks one header line of a request head and counts its framing headers; a status
// other than 0 refuses the request.
func (f *framing) line(l []byte) (int, string) {
	if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
		return http.StatusBadRequest, "obsolete header line folding"
	}
	name, value, ok := bytes.Cut(l, []byte(":"))
	if !ok {
		return http.StatusBadRequest, "header line without a colon"
	}
	if len(name) == 0 || bytes.ContainsAny(name, " \t") {
		return http.StatusBadRequest, "whitespace in a header name"
	}
	v := bytes.TrimSpace(value)
	switch {
	case bytes.EqualFold(name, []byte("Content-Length")):
		if f.cl > 0 && !bytes.Equal(v, f.clValue) {
			return http.StatusBadRequest, "conflicting Content-Length headers"
		}
		if _, err := strconv.ParseUint(string(v), 10, 63); err != nil {
			return http.StatusBadRequest, "invalid Content-Length"
		}
		f.cl++
		f.clValue = v
	case bytes.EqualFold(name, []byte("Transfer-Encoding")):
		f.te++
		if !bytes.EqualFold(v, []byte("chunked")) || f.te > 1 {
			return http.StatusNotImplemented, "unsupported Transfer-Encoding " + strconv.Quote(string(v))
		}
	}
	return 0, ""
}

// writeResponse writes resp as HTTP/1.1 and returns the number of body bytes written.
func writeResponse(bw *bufio.Writer, resp *http.Response, req *http.Request, keep bool) (int64, error) {
	resp.ProtoMajor, resp.ProtoMinor, resp.Proto = 1, 1, "HTTP/1.1"
	resp.Close = resp.Close || !keep
	resp.Request = req
	if resp.Header == nil {
		resp.Header = http.Header{}
	}
	stripHopByHop(resp.Header)
	resp.TransferEncoding = nil
	if resp.ContentLength < 0 && req.ProtoAtLeast(1, 1) && bodyAllowed(resp.StatusCode, req.Method) {
		resp.TransferEncoding = []string{"chunked"}
	}
	body := resp.Body
	// A small body of known length goes out with the headers, in one write (one DATA frame,
	// one TLS record): the headers are not flushed before its first read.
	cb := &countingFlushReader{r: body, w: bw, hold: resp.ContentLength >= 0 && resp.ContentLength <= smallBody}
	// bw's own ReadFrom would read the body into its buffer while our reader flushes that
	// buffer: hide it, so that io.Copy brings a buffer of its own.
	var err error
	if fastResponse(resp, req) {
		err = writeResponseBody(bw, resp, cb)
	} else {
		resp.Body = cb
		err = resp.Write(noReadFrom{bw})
		resp.Body = body
	}
	if err == nil {
		err = bw.Flush()
	}
	return cb.n, err
}

func bodyAllowed(code int, method string) bool {
	return method != http.MethodHead && code != http.StatusNoContent && code != http.StatusNotModified && code >= 200
}

// smallBody is the largest response body writeResponse sends together with its headers.
const smallBody = 16 << 10

// noReadFrom is a bufio.Writer without its ReadFrom. It keeps WriteString, through which
// the header lines go out without a copy each.
type noReadFrom struct{ w *bufio.Writer }

func (n noReadFrom) Write(p []byte) (int, error)       { return n.w.Write(p) }
func (n noReadFrom) WriteString(s string) (int, error) { return n.w.WriteString(s) }

// countingFlushReader counts the body and flushes what is buffered before it waits for
// more, so that a streamed response reaches the client as it comes. With hold, the first
// read does not flush.
type countingFlushReader struct {
	r    io.Reader
	w    *bufio.Writer
	n    int64
	hold bool
}

func (c *countingFlushReader) Read(p []byte) (int, error) {
	if c.hold {
		c.hold = false
	} else if c.w.Buffered() > 0 {
		if err := c.w.Flush(); err != nil {
			return 0, err
		}
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingFlushReader) Close() error { return nil }

// continueReader answers "100 Continue" when the request body is first read, as a server
// does for a client that waits for it before sending.
type continueReader struct {
	r io.ReadCloser
	w *bufio.Writer

	mu   sync.Mutex // the transport reads the body on its own goroutine
	sent bool       // 100 Continue sent, or no longer possible
}

// responding stops the reader from writing 100 Continue: the final response is coming.
func (c *continueReader) responding() {
	c.mu.Lock()
	c.sent = true
	c.mu.Unlock()
}

func (c *continueReader) Read(p []byte) (int, error) {
	c.mu.Lock()
	if !c.sent {
		c.sent = true
		_, err := c.w.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err == nil {
			err = c.w.Flush()
		}
		if err != nil {
			c.mu.Unlock()
			return 0, err
		}
	}
	c.mu.Unlock()
	return c.r.Read(p)
}

func (c *continueReader) Close() error { return c.r.Close() }

func nilURL() *url.URL { return &url.URL{} }
