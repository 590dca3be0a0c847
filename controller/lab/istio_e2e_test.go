package lab

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
)

// callWith makes one request from pod with extra headers and returns the status and the
// echo's pod.
func callWith(from *PodState, url string, header http.Header) (int, string, error) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	req, err := http.NewRequest("GET", url+sep+"format=json", nil)
	if err != nil {
		return 0, "", err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := Client(from.NetNS, 5*time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Ambit-Pod"), nil
}

// TestLabWaypointIstioSplit: Istio's VirtualService and DestinationRule, as a user of Istio
// writes them, split Service web 80/20 between the subsets v1 and v2 (the pods' version
// label) and send every request with x-canary: true to v2.
func TestLabWaypointIstioSplit(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/web-istio-split.yaml")
	wait.Until(t, settle, "the VirtualService in the waypoint's config", func() error {
		return waypointHasWeights("demo/web", 80, 20)
	})
	const total = 2000
	n := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, total)
	sem := make(chan struct{}, 8)
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			code, p, err := callWith(client, "http://"+webVIP+"/", nil)
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d", code)
			}
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			n[p]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a request of the split failed: %v", err)
	}
	v1 := float64(n["demo/web-v1"]) / total * 100
	if v1 < 77 || v1 > 83 || n["demo/web-v1"]+n["demo/web-v2"] != total {
		t.Fatalf("80/20 split over %d requests: %v = %.1f%% to v1, want 80 ± 3", total, n, v1)
	}
	t.Logf("80/20 split over %d requests: %.1f%% v1 (%v)", total, v1, n)

	canary := http.Header{"X-Canary": {"true"}}
	c := map[string]int{}
	for i := 0; i < 200; i++ {
		code, p, err := callWith(client, "http://"+webVIP+"/", canary)
		if err != nil || code != 200 {
			t.Fatalf("canary request %d: status %d, %v", i, code, err)
		}
		c[p]++
	}
	if c["demo/web-v2"] != 200 {
		t.Fatalf("200 requests with x-canary: true went to %v, want all to demo/web-v2", c)
	}
	t.Logf("x-canary: true: %v", c)
}

// TestLabWaypointIstioAuthorization: Istio's AuthorizationPolicy, with a serviceAccounts
// source, a path wildcard and a when condition on a request header, enforced by the
// waypoint.
func TestLabWaypointIstioAuthorization(t *testing.T) {
	st := webWaypoint(t)
	client, other := pod(t, st, "demo", "client"), pod(t, st, "demo", "other")
	apply(t, "testdata/policies/web-istio-authz.yaml")
	post := func(from *PodState, token string) int {
		req, _ := http.NewRequest("POST", "http://"+webVIP+"/admin", nil)
		if token != "" {
			req.Header.Set("X-Token", token)
		}
		resp, err := Client(from.NetNS, 5*time.Second).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	wait.Until(t, settle, "the policy in force", func() error {
		if code := post(client, ""); code != http.StatusForbidden {
			return fmt.Errorf("POST /admin from client without the token: %d, want 403", code)
		}
		return nil
	})
	for _, from := range []*PodState{client, other} {
		if code, _, err := callWith(from, "http://"+webVIP+"/public/index.html", nil); err != nil || code != 200 {
			t.Fatalf("GET /public/index.html from %s: %d, %v", from.Name, code, err)
		}
	}
	if code, _, err := callWith(client, "http://"+webVIP+"/private", nil); err != nil || code != http.StatusForbidden {
		t.Fatalf("GET /private: %d, %v; want 403", code, err)
	}
	if code := post(client, "letmein"); code != 200 {
		t.Fatalf("POST /admin from client with the token: %d, want 200", code)
	}
	if code := post(other, "letmein"); code != http.StatusForbidden {
		t.Fatalf("POST /admin from other with the token: %d, want 403", code)
	}
}

// TestLabWaypointIstioOutlierDetection: a DestinationRule's outlierDetection on a Service no
// route names: the waypoint ejects the endpoint that fails and the rest succeed.
func TestLabWaypointIstioOutlierDetection(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/web-istio-outlier.yaml")
	wait.Until(t, settle, "the DestinationRule in the waypoint's config", func() error {
		return waypointHasWeights("demo/web", 1)
	})
	bad := "http://" + webVIP + "/flaky/100"
	failures := 0
	for i := 0; i < 60; i++ {
		code, p, err := callWith(client, bad+"?pods=demo/web-v1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if code != 200 {
			failures++
			if p != "demo/web-v1" {
				t.Fatalf("a failure from %q", p)
			}
		}
	}
	// The requests are sequential and not retried: web-v1 fails exactly 3 in a row (the
	// DestinationRule's threshold, not the waypoint's default of 5), then every request goes
	// to web-v2.
	if failures != 3 {
		t.Fatalf("%d of 60 requests failed; want 3, the ejection threshold", failures)
	}
	for i := 0; i < 30; i++ {
		if code, p, err := callWith(client, bad+"?pods=demo/web-v1", nil); err != nil || code != 200 || p != "demo/web-v2" {
			t.Fatalf("after the ejection: %d from %q, %v", code, p, err)
		}
	}
	t.Logf("web-v1 failed %d requests before it was ejected", failures)
}

// TestLabIstioPeerAuthenticationPortLevel: Istio's PeerAuthentication STRICT with one port
// PERMISSIVE: plaintext from outside the mesh is refused on 8080 and let in on 9000, and
// mesh traffic flows on both.
func TestLabIstioPeerAuthenticationPortLevel(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	outsider, client, server := pod(t, st, "outside", "outsider"), pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	url := "http://" + server.IP + ":8080/"
	apply(t, "testdata/policies/server-istio-peerauthn.yaml")
	wait.Until(t, settle, "plaintext refused on 8080", func() error { _, err := get(outsider, url); return refused(err) })
	if err := tcpEcho(outsider, server.IP+":9000"); err != nil {
		t.Fatalf("plaintext on the PERMISSIVE port 9000: %v", err)
	}
	if _, err := get(client, url); err != nil {
		t.Fatalf("the client over HBONE on 8080: %v", err)
	}
	if err := tcpEcho(client, server.IP+":9000"); err != nil {
		t.Fatalf("the client over HBONE on 9000: %v", err)
	}
}
