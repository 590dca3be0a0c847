package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerSize(t *testing.T) {
	srv := httptest.NewServer(Handler(1024))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/x", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(b) != 1024 || resp.ContentLength != 1024 {
		t.Fatalf("%s, %d bytes, content-length %d", resp.Status, len(b), resp.ContentLength)
	}
}
