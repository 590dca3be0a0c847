package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
)

// FuzzCheckHead runs the HTTP/1 head check on arbitrary bytes: it never panics, and a head
// it passes is one Go's parser can read without a Content-Length/Transfer-Encoding clash.
func FuzzCheckHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"GET / HTTP/1.1\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 8<<10)
		br, code, _ := checkHead(br, 4<<10)
		if code != 0 {
			return
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if len(req.TransferEncoding) > 0 && len(req.Header.Values("Content-Length")) > 0 {
			t.Fatalf("passed a request with both framings: %q", b)
		}
	})
}

// FuzzSniff classifies arbitrary first bytes without panicking or reading past them.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{h2Preface, "GET / HTTP/1.1\r\n", "PRI * HTTP/1.1\r\n", "\x16\x03\x01", "SSH-2.0-x\r\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 64<<10)
		p, _ := sniff(br)
		if p == protoHTTP2 && !bytes.HasPrefix(b, []byte(h2Preface)) {
			t.Fatalf("h2 for %q", b)
		}
		if br.Buffered() > len(b) {
			t.Fatal("buffered more than the input")
		}
	})
}
