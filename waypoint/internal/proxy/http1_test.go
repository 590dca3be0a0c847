package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// countingWriter records each write that reaches it.
type countingWriter struct{ writes []string }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

// TestWriteResponseSmallBodyInOneWrite: a 1 KB response leaves as one write (one DATA frame
// and TLS record on the tunnel), headers and body together.
func TestWriteResponseSmallBodyInOneWrite(t *testing.T) {
	var out countingWriter
	bw := bufio.NewWriterSize(&out, 16<<10)
	body := strings.Repeat("b", 1024)
	resp := &http.Response{StatusCode: 200, Header: http.Header{}, ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body))}
	req, _ := http.NewRequest("GET", "http://web/", nil)
	n, err := writeResponse(bw, resp, req, true)
	if err != nil || n != 1024 {
		t.Fatalf("writeResponse: %d, %v", n, err)
	}
	if len(out.writes) != 1 || !strings.HasPrefix(out.writes[0], "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(out.writes[0], body) {
		t.Fatalf("a 1 KB response left in %d writes, want 1 with headers and body", len(out.writes))
	}
}

// TestWriteResponseStreamsHeadersFirst: a response whose body is still coming (unknown
// length) sends its headers before it waits for the body.
func TestWriteResponseStreamsHeadersFirst(t *testing.T) {
	pr, pw := io.Pipe()
	var out countingWriter
	done := make(chan error, 1)
	headersSent := make(chan struct{})
	bw := bufio.NewWriterSize(writerFunc(func(p []byte) (int, error) {
		n, err := out.Write(p)
		if len(out.writes) == 1 {
			close(headersSent)
		}
		return n, err
	}), 16<<10)
	resp := &http.Response{StatusCode: 200, Header: http.Header{}, ContentLength: -1, Body: pr}
	req, _ := http.NewRequest("GET", "http://web/", nil)
	go func() { _, err := writeResponse(bw, resp, req, true); done <- err }()
	select {
	case <-headersSent:
	case <-time.After(5 * time.Second):
		t.Fatal("the headers of a streamed response waited for its body")
	}
	if !strings.HasPrefix(out.writes[0], "HTTP/1.1 200 OK\r\n") || !strings.Contains(out.writes[0], "Transfer-Encoding: chunked") {
		t.Fatalf("first write %q, want the chunked response's headers", out.writes[0])
	}
	_, _ = pw.Write([]byte("late"))
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestWriteResponseHeadersCostNoAllocations: a response's header lines are written
// through the buffer's WriteString, so more headers do not mean more allocations. The bound
// leaves room for the race detector, under which sync.Pool drops some of what is put back:
// a copy per header line costs four allocations for each of the 18 headers more.
func TestWriteResponseHeadersCostNoAllocations(t *testing.T) {
	bw := bufio.NewWriterSize(io.Discard, 16<<10)
	req, _ := http.NewRequest("GET", "http://web/", nil)
	allocs := func(headers int) float64 {
		h := http.Header{}
		for i := range headers {
			h["X-Header-"+strings.Repeat("a", i+1)] = []string{"value"}
		}
		return testing.AllocsPerRun(50, func() {
			resp := &http.Response{StatusCode: 200, Header: h, ContentLength: 0, Body: http.NoBody}
			if _, err := writeResponse(bw, resp, req, true); err != nil {
				t.Fatal(err)
			}
		})
	}
	few, many := allocs(2), allocs(20)
	if many-few >= 18 {
		t.Fatalf("writing a response with 20 headers allocated %.0f times, with 2 headers %.0f: header lines are copied", many, few)
	}
}
