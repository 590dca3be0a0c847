package health

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReadyHandler(t *testing.T) {
	var err error = errors.New("config not received from the controller yet")
	h := ReadyHandler(func() error { return err })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz/ready", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "config not received") {
		t.Fatalf("not ready: %d %q", rec.Code, rec.Body)
	}
	err = nil
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz/ready", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "ready\n" {
		t.Fatalf("ready: %d %q", rec.Code, rec.Body)
	}
}
