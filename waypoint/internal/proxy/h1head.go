package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"ambit.dev/mesh/hbone"
	"golang.org/x/net/http/httpguts"
)

// The waypoint writes the heads of the commonest HTTP/1.1 messages itself: an upstream
// request without a body, and a response with a body of known length. net/http's
// Request.Write and Response.Write format each head through fmt (three Fprintf calls for a
// request, one for a response), copy the message and allocate a transfer writer per call:
// 6.6 % of the waypoint's CPU at 1,000 req/s (docs/benchmarks.md). What these functions
// write is byte for byte what net/http writes for the same message (FuzzHeadWriters
// compares the two); every other message, and any field these do not handle, goes
// through net/http as before.

// fastRequest reports whether writeRequestHead writes req: no body, no trailer, no
// transfer coding, no Connection field (net/http merges Close with it), an ASCII host that
// is not an IPv6 literal (net/http converts and strips zones there), and not CONNECT.
func fastRequest(req *http.Request) bool {
	if req.URL == nil || req.ContentLength != 0 || (req.Body != nil && req.Body != http.NoBody) ||
		req.TransferEncoding != nil || req.Trailer != nil || req.Method == http.MethodConnect ||
		req.Header["Connection"] != nil {
		return false
	}
	host := reqHost(req)
	return !strings.HasPrefix(host, "[") && isASCII(host)
}

// reqHost is the host net/http puts in the Host field, before its checks.
func reqHost(req *http.Request) string {
	if req.Host != "" {
		return req.Host
	}
	return req.URL.Host
}

// writeRequestHead writes req's head, which fastRequest accepted, as net/http's
// Request.Write would, into bw (not flushed). A request URI with a control character is an
// error, as there.
func writeRequestHead(bw *bufio.Writer, req *http.Request) error {
	host := reqHost(req)
	if !httpguts.ValidHostHeader(host) {
		host = "" // as net/http does: an altered Host would be a smuggling vector
	}
	ruri := req.URL.RequestURI()
	if hasCTL(ruri) {
		return errors.New("net/http: can't write control character in Request.URL")
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(ruri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	userAgent := defaultUserAgent
	if _, has := req.Header["User-Agent"]; has {
		userAgent = req.Header.Get("User-Agent")
	}
	if userAgent != "" {
		writeField(bw, "User-Agent", userAgent)
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n") // many servers expect one for these
	}
	writeFields(bw, req.Header, reqExcluded)
	_, err := bw.WriteString("\r\n")
	return err
}

// defaultUserAgent is net/http's, sent when the request has no User-Agent field at all.
const defaultUserAgent = "Go-http-client/1.1"

// fastResponse reports whether writeResponseBody writes resp, answering req: a body of
// known, non-zero length that the request method and status allow, no trailer, no
// Connection field, a three-digit status.
func fastResponse(resp *http.Response, req *http.Request) bool {
	return resp.ContentLength > 0 && resp.Body != nil && resp.TransferEncoding == nil && resp.Trailer == nil &&
		resp.StatusCode >= 100 && resp.StatusCode <= 999 && bodyAllowed(resp.StatusCode, req.Method) &&
		resp.Header["Connection"] == nil
}

// writeResponseHead writes resp's HTTP/1.1 head, which fastResponse accepted, as net/http's
// Response.Write would, into bw (not flushed).
func writeResponseHead(bw *bufio.Writer, resp *http.Response) {
	code := resp.StatusCode
	bw.WriteString("HTTP/1.1 ")
	bw.WriteByte(byte('0' + code/100))
	bw.WriteByte(byte('0' + code/10%10))
	bw.WriteByte(byte('0' + code%10))
	bw.WriteByte(' ')
	bw.WriteString(reasonPhrase(resp))
	bw.WriteString("\r\n")
	if resp.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("Content-Length: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), resp.ContentLength, 10))
	bw.WriteString("\r\n")
	writeFields(bw, resp.Header, respExcluded)
	bw.WriteString("\r\n")
}

// reasonPhrase is the reason phrase net/http writes: Status without its leading code, or
// the standard text for the code.
func reasonPhrase(resp *http.Response) string {
	code, text := resp.StatusCode, resp.Status
	if text == "" {
		if text = http.StatusText(code); text == "" {
			text = "status code " + strconv.Itoa(code)
		}
		return text
	}
	if len(text) >= 4 && text[3] == ' ' && text[0] == byte('0'+code/100) && text[1] == byte('0'+code/10%10) &&
		text[2] == byte('0'+code%10) {
		return text[4:]
	}
	return text
}

// writeResponseBody writes resp's head and its body of resp.ContentLength bytes, read from
// body, into bw as net/http's Response.Write would: the body is read to its end and closed,
// and a body of another length is an error once read. The body is copied through a buffer
// of its own (hbone.CopyBuffered), not bw's ReadFrom (see noReadFrom).
func writeResponseBody(bw *bufio.Writer, resp *http.Response, body io.ReadCloser) (err error) {
	defer func() {
		if cerr := body.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	writeResponseHead(bw, resp)
	lr := io.LimitedReader{R: body, N: resp.ContentLength}
	n, err := hbone.CopyBuffered(noReadFrom{bw}, &lr)
	if err != nil {
		return err
	}
	extra, err := io.Copy(io.Discard, body) // io.Discard reads through buffers of its own
	if err != nil {
		return err
	}
	if n += extra; n != resp.ContentLength {
		return fmt.Errorf("http: ContentLength=%d with Body length %d", resp.ContentLength, n)
	}
	return nil
}

// The fields net/http writes itself rather than from the header map, by exact key.
var (
	reqExcluded  = []string{"Content-Length", "Host", "Trailer", "Transfer-Encoding", "User-Agent"}
	respExcluded = []string{"Content-Length", "Trailer", "Transfer-Encoding"}
)

// writeFields writes h's fields but those of the excluded keys, as net/http's
// Header.WriteSubset does: keys in byte order, a key that is not a valid field name left
// out, each value with its line breaks made spaces and its outer blanks trimmed.
func writeFields(bw *bufio.Writer, h http.Header, excluded []string) {
	var small [32]string
	keys := small[:0]
	for k := range h {
		if !slices.Contains(excluded, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range h[k] {
			writeField(bw, k, v)
		}
	}
}

// writeField writes one field line, its value cleaned as net/http cleans it (the replacer
// returns a value without line breaks as it is).
func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(textproto.TrimString(newlineToSpace.Replace(v)))
	bw.WriteString("\r\n")
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// hasCTL reports whether s holds an ASCII control character.
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
