package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// headCase is a request and a response built from a few strings, as the fuzz target gets
// them: fields are "key:value" entries separated by NUL, so that values can hold CR and LF.
type headCase struct {
	method, path, query, host, urlHost, fields string
	close                                      bool
	status                                     int
	reason                                     string
	length                                     int64
	body                                       string
}

func (c headCase) header() http.Header {
	h := http.Header{}
	for _, kv := range strings.Split(c.fields, "\x00") {
		if k, v, ok := strings.Cut(kv, ":"); ok {
			h[k] = append(h[k], v)
		}
	}
	return h
}

func (c headCase) request() *http.Request {
	return &http.Request{Method: c.method, URL: &url.URL{Path: c.path, RawQuery: c.query, Host: c.urlHost},
		Host: c.host, Header: c.header(), Close: c.close}
}

func (c headCase) response() *http.Response {
	return &http.Response{StatusCode: c.status, Status: c.reason, ProtoMajor: 1, ProtoMinor: 1, Header: c.header(),
		ContentLength: c.length, Close: c.close, Body: io.NopCloser(strings.NewReader(c.body)),
		Request: &http.Request{Method: c.method}}
}

// written is what write put into a buffered writer, and its error.
func written(write func(*bufio.Writer) error) (string, string) {
	var b bytes.Buffer
	bw := bufio.NewWriterSize(&b, 64)
	err := write(bw)
	bw.Flush()
	if err != nil {
		return b.String(), err.Error()
	}
	return b.String(), ""
}

// compareHeads fails t where a head writer of ours, given c, writes other bytes or another
// error than net/http's writer; it reports which of the two it could compare.
func compareHeads(t *testing.T, c headCase) (reqFast, respFast bool) {
	t.Helper()
	if reqFast = fastRequest(c.request()); reqFast {
		sameWrites(t, "request", c,
			func(bw *bufio.Writer) error { return writeRequestHead(bw, c.request()) },
			func(bw *bufio.Writer) error { return c.request().Write(bw) })
	}
	if respFast = fastResponse(c.response(), &http.Request{Method: c.method}); respFast {
		sameWrites(t, "response", c,
			func(bw *bufio.Writer) error { resp := c.response(); return writeResponseBody(bw, resp, resp.Body) },
			func(bw *bufio.Writer) error { return c.response().Write(noReadFrom{bw}) })
	}
	return reqFast, respFast
}

// sameWrites fails t where ours and net/http's writer of c's message (what) write other
// bytes or another error.
func sameWrites(t *testing.T, what string, c headCase, ours, netHTTP func(*bufio.Writer) error) {
	t.Helper()
	o, oErr := written(ours)
	n, nErr := written(netHTTP)
	if o != n || oErr != nErr {
		t.Errorf("%s %+v:\nours:    %q (err %q)\nnet/http: %q (err %q)", what, c, o, oErr, n, nErr)
	}
}

var headCases = []headCase{
	// what the bench sends and gets back
	{method: "GET", path: "/", host: "10.79.2.2:8080", fields: "User-Agent:fortio.org/fortio-1.75.3\x00Forwarded:for=\"10.79.1.2:40000\"\x00X-Forwarded-For:10.79.1.2\x00Traceparent:00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		status: 200, reason: "200 OK", length: 1024, body: strings.Repeat("x", 1024)},
	{method: "POST", path: "/a b", query: "q=1&r", host: "web", fields: "content-type:text/plain\x00Content-Length:99\x00X-Multi:one\x00X-Multi:two",
		close: true, status: 201, reason: "201 Created", length: 3, body: "abc"},
	{method: "", path: "/", urlHost: "from-url:80", fields: "User-Agent:\x00Host:ignored\x00Trailer:x\x00Transfer-Encoding:chunked",
		status: 299, reason: "", length: 1, body: "z"},
	{method: "PATCH", path: "/p", host: "bad host/with space", fields: "X-Crlf: a\r\nInjected: b \x00X-Bad Key:v\x00x-lower:\t padded \t",
		status: 418, reason: "I'm a teapot", length: 2, body: "ab"},
	{method: "DELETE", path: "/\x01ctl", host: "h", status: 200, reason: "200 custom reason", length: 4, body: "abcdef"},
	{method: "PUT", path: "/", host: "h", fields: "User-Agent:agent\r\n", status: 599, reason: "599", length: 5, body: "abc"},
	{method: "OPTIONS", path: "*", host: "h", fields: "Connection:keep-alive", status: 200, reason: "2000 OK", length: 2, body: "ab"},
}

// TestHeadWritersMatchNetHTTP checks that the waypoint's own head writers write what
// net/http's do, on messages like the bench's and on the fields net/http cleans, leaves
// out or writes itself; and that the commonest messages do take the fast path.
func TestHeadWritersMatchNetHTTP(t *testing.T) {
	var reqs, resps int
	for _, c := range headCases {
		r, s := compareHeads(t, c)
		if r {
			reqs++
		}
		if s {
			resps++
		}
	}
	if !fastRequest(headCases[0].request()) || !fastResponse(headCases[0].response(), headCases[0].request()) {
		t.Errorf("the bench's request and response do not take the fast path")
	}
	if reqs < 4 || resps < 5 {
		t.Errorf("fast path taken by %d requests and %d responses of %d cases; the cases no longer test it", reqs, resps, len(headCases))
	}
	// What the fast paths leave to net/http.
	for name, req := range map[string]*http.Request{
		"body":       {Method: "POST", URL: &url.URL{Path: "/"}, Body: io.NopCloser(strings.NewReader("x")), ContentLength: 1},
		"connect":    {Method: "CONNECT", URL: &url.URL{Host: "h:1"}},
		"connection": {Method: "GET", URL: &url.URL{Path: "/"}, Header: http.Header{"Connection": {"close"}}},
		"ipv6":       {Method: "GET", URL: &url.URL{Path: "/"}, Host: "[fe80::1%25eth0]:80"},
		"idna":       {Method: "GET", URL: &url.URL{Path: "/"}, Host: "bücher.example"},
		"trailer":    {Method: "GET", URL: &url.URL{Path: "/"}, Trailer: http.Header{"X": nil}},
	} {
		if fastRequest(req) {
			t.Errorf("request with %s takes the fast path", name)
		}
	}
	get := &http.Request{Method: "GET"}
	for name, c := range map[string]struct {
		resp *http.Response
		req  *http.Request
	}{
		"unknown length": {&http.Response{StatusCode: 200, ContentLength: -1, Body: http.NoBody}, get},
		"empty":          {&http.Response{StatusCode: 200, ContentLength: 0, Body: http.NoBody}, get},
		"HEAD":           {&http.Response{StatusCode: 200, ContentLength: 5, Body: http.NoBody}, &http.Request{Method: "HEAD"}},
		"304":            {&http.Response{StatusCode: 304, ContentLength: 5, Body: http.NoBody}, get},
		"chunked":        {&http.Response{StatusCode: 200, ContentLength: 5, TransferEncoding: []string{"chunked"}, Body: http.NoBody}, get},
		"trailer":        {&http.Response{StatusCode: 200, ContentLength: 5, Trailer: http.Header{}, Body: http.NoBody}, get},
		"status 1000":    {&http.Response{StatusCode: 1000, ContentLength: 5, Body: http.NoBody}, get},
		"no body":        {&http.Response{StatusCode: 200, ContentLength: 5}, get},
	} {
		if fastResponse(c.resp, c.req) {
			t.Errorf("response with %s takes the fast path", name)
		}
	}
}

// FuzzHeadWriters compares the waypoint's own head writers with net/http's on any message
// they take: the same bytes and the same error.
func FuzzHeadWriters(f *testing.F) {
	for _, c := range headCases {
		f.Add(c.method, c.path, c.query, c.host, c.urlHost, c.fields, c.close, c.status, c.reason, c.length, c.body)
	}
	f.Fuzz(func(t *testing.T, method, path, query, host, urlHost, fields string, close bool, status int, reason string, length int64, body string) {
		if length > 1<<16 {
			length %= 1 << 16
		}
		compareHeads(t, headCase{method, path, query, host, urlHost, fields, close, status, reason, length, body})
	})
}

// BenchmarkHeadWriters is the cost of writing the bench's request and response (headCases[0])
// with the waypoint's writers and with net/http's.
func BenchmarkHeadWriters(b *testing.B) {
	c := headCases[0]
	req, resp := c.request(), c.response()
	body := strings.NewReader(c.body)
	bw := bufio.NewWriterSize(io.Discard, 16<<10)
	run := func(name string, write func() error) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				body.Reset(c.body)
				if err := write(); err != nil {
					b.Fatal(err)
				}
				bw.Flush()
			}
		})
	}
	run("request/ours", func() error { return writeRequestHead(bw, req) })
	run("request/net-http", func() error { return req.Write(bw) })
	resp.Body = io.NopCloser(body)
	run("response/ours", func() error { return writeResponseBody(bw, resp, resp.Body) })
	run("response/net-http", func() error { return resp.Write(noReadFrom{bw}) })
}
