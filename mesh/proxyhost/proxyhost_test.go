package proxyhost

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/xdsclient"
	"ambit.dev/proto/dump"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEndpoints runs the three endpoints on real loopback listeners: readiness goes from 503
// with the reason to 200, metrics and the config dump answer, and Run returns when its
// context ends, leaving no goroutine behind.
func TestEndpoints(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tracker := NewSyncTracker([]string{"a", "b"})
	var (
		mu   sync.Mutex
		cert = dump.CertInfo{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/x"), State: dump.StateExpired}
	)
	certs := func() []dump.CertInfo { mu.Lock(); defer mu.Unlock(); return []dump.CertInfo{cert} }
	reg := NewRegistry()
	s, err := Endpoints{
		AdminAddr: "127.0.0.1:0", Dump: func() any { return map[string]int{"pods": 2} },
		MetricsAddr: "127.0.0.1:0", Metrics: reg,
		ReadyAddr: "127.0.0.1:0", Ready: AllReady(tracker.Ready, CertsServing(certs)),
		ReusePort: true,
	}.Listen(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	ready := "http://" + s.Addr("ready").String() + "/healthz/ready"
	for _, step := range []struct {
		do   func()
		code int
		body string
	}{
		{func() {}, 503, "not ready: config not received from the controller yet"},
		{func() { tracker.Arrived("a") }, 503, "config not received"},
		{func() { tracker.Arrived("b") }, 503, "not ready: certificate for spiffe://cluster.local/ns/shop/sa/x is expired"},
		{func() { mu.Lock(); cert.State = dump.StateRenewing; mu.Unlock() }, 200, "ready\n"},
	} {
		step.do()
		if code, body := get(t, ready); code != step.code || !strings.Contains(body, step.body) {
			t.Fatalf("ready: %d %q, want %d %q", code, body, step.code, step.body)
		}
	}
	if code, body := get(t, "http://"+s.Addr("metrics").String()+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") ||
		!strings.Contains(body, "\nambit_hbone_h3_duplicated_packets_total ") || !strings.Contains(body, "\nambit_hbone_h3_loss_shielded_connections ") {
		t.Fatalf("metrics: %d, without the Go and process collectors or the HTTP/3 loss shield's counters", code)
	}
	if code, body := get(t, "http://"+s.Addr("admin").String()+"/config_dump"); code != 200 || body != "{\n  \"pods\": 2\n}\n" {
		t.Fatalf("config_dump: %d %q", code, body)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
	if _, err := net.Dial("tcp", s.Addr("ready").String()); err == nil {
		t.Fatal("ready listener still open after Run returned")
	}
}

// TestListenAddressInUse: one endpoint's address in use fails the start, naming it, and the
// listeners opened before it are closed again.
func TestListenAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := free.Addr().String()
	free.Close()
	_, err = Endpoints{AdminAddr: adminAddr, Dump: func() any { return nil }, MetricsAddr: busy.Addr().String(), Metrics: NewRegistry()}.Listen(context.Background())
	if err == nil || !strings.Contains(err.Error(), "metrics listener") {
		t.Fatalf("Listen with the metrics address in use: %v", err)
	}
	ln, err := net.Listen("tcp", adminAddr)
	if err != nil {
		t.Fatalf("admin listener left open after the failed start: %v", err)
	}
	ln.Close()
}

// TestCloseBeforeRun: Servers closed without being run release their listeners, and Run
// afterwards returns at once.
func TestCloseBeforeRun(t *testing.T) {
	s, err := Endpoints{ReadyAddr: "127.0.0.1:0", Ready: func() error { return nil }}.Listen(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Addr("admin") != nil {
		t.Fatal("admin endpoint without an address has one")
	}
	addr := s.Addr("ready").String()
	s.Close()
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("ready listener left open: %v", err)
	}
	ln.Close()
}

func TestSyncTracker(t *testing.T) {
	s := NewSyncTracker([]string{"a", "b"})
	var applied []string
	h := s.Handler(func(typeURL string, upserts map[string]proto.Message, removals []string) error {
		if typeURL == "bad" {
			return errors.New("rejected")
		}
		if typeURL == "a" && (len(upserts) != 1 || !proto.Equal(upserts["x"], wrapperspb.String("v")) || len(removals) != 1) {
			t.Errorf("apply(a) = %v, %v", upserts, removals)
		}
		applied = append(applied, typeURL)
		return nil
	})
	if s.Synced() || s.Ready() == nil {
		t.Fatal("synced before anything arrived")
	}
	if err := h.Apply("a", map[string]xdsclient.Resource{"x": {Message: wrapperspb.String("v")}}, []string{"y"}); err != nil {
		t.Fatal(err)
	}
	if err := h.Apply("bad", nil, nil); err == nil {
		t.Fatal("a rejected update is not an error")
	}
	if s.Synced() {
		t.Fatal("synced with b pending")
	}
	if err := h.Apply("b", nil, nil); err != nil {
		t.Fatal(err)
	}
	if !s.Synced() || s.Ready() != nil || strings.Join(applied, ",") != "a,b" {
		t.Fatalf("after a and b: synced %v, ready %v, applied %v", s.Synced(), s.Ready(), applied)
	}

	// Concurrent arrivals (run with -race), and a config loaded whole.
	s = NewSyncTracker([]string{"a", "b", "c", "d"})
	var wg sync.WaitGroup
	for _, typ := range []string{"a", "b", "c", "d"} {
		wg.Go(func() { s.Arrived(typ); _ = s.Synced() })
	}
	wg.Wait()
	if !s.Synced() {
		t.Fatal("not synced after every type arrived")
	}
	s = NewSyncTracker([]string{"a"})
	s.MarkSynced()
	if !s.Synced() {
		t.Fatal("MarkSynced did not sync")
	}
}

func TestCertServing(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/wp")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")
	for _, tc := range []struct {
		certs []dump.CertInfo
		want  string
	}{
		{nil, "no certificate for spiffe://cluster.local/ns/shop/sa/wp yet"},
		{[]dump.CertInfo{{ID: other, State: dump.StateValid}}, "no certificate for"},
		{[]dump.CertInfo{{ID: id, State: dump.StateExpired}}, "no certificate for"},
		{[]dump.CertInfo{{ID: other, State: dump.StateExpired}, {ID: id, State: dump.StateRetrying}}, ""},
	} {
		err := CertServing(func() []dump.CertInfo { return tc.certs }, func() spiffeid.ID { return id })()
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CertServing(%v) = %v, want %q", tc.certs, err, tc.want)
		}
	}
}

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

func TestRegisterPprof(t *testing.T) {
	mux := http.NewServeMux()
	RegisterPprof(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for path, want := range map[string]string{
		"/debug/pprof/heap?debug=1":      "# HeapInuse = ",
		"/debug/pprof/goroutine?debug=1": "goroutine profile:",
		"/debug/pprof/cmdline":           "proxyhost.test",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %s, body without %q", path, resp.Status, want)
		}
	}
	resp, err := http.Post(srv.URL+"/debug/pprof/heap", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST to the profiles: %s, want 405", resp.Status)
	}
}
