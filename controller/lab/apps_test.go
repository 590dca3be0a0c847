package lab

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestEchoFailuresByPod: /delay and /flaky apply only on the pods ?pods= names, and /hits
// counts the requests served by path (what a mirror received).
func TestEchoFailuresByPod(t *testing.T) {
	srv := httptest.NewServer(echoHandler("demo/a", nil))
	defer srv.Close()
	do := func(path string) (int, string, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b)), time.Since(start)
	}
	tests := []struct {
		path     string
		code     int
		minDelay time.Duration
	}{
		{"/delay/300ms?pods=demo/a", 200, 300 * time.Millisecond},
		{"/delay/300ms", 200, 300 * time.Millisecond},
		{"/delay/5s?pods=demo/b,demo/c", 200, 0},
		{"/flaky/100?pods=demo/a", 503, 0},
		{"/flaky/100?pods=demo/b", 200, 0},
		{"/flaky/100", 503, 0},
	}
	for _, tt := range tests {
		code, _, d := do(tt.path)
		if code != tt.code || d < tt.minDelay || (tt.minDelay == 0 && d > time.Second) {
			t.Errorf("%s: %d after %v; want %d after %v", tt.path, code, d, tt.code, tt.minDelay)
		}
	}
	for i := 0; i < 3; i++ {
		do("/m/1?x=y")
	}
	for path, want := range map[string]string{"/m/1": "3", "/m/2": "0", "/flaky/100": "3", "/hits": "0"} {
		if code, got, _ := do("/hits?path=" + path); code != 200 || got != want {
			t.Errorf("/hits?path=%s: %d %q, want %s", path, code, got, want)
		}
	}
}
