package lab

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/controller/internal/model"
	"ambit.dev/mesh/hbone"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The waypoint tests bind service account demo/web (pods web-v1 and web-v2, Services web,
// web-v1 and web-v2) to the waypoint web-wp and check what it does, from demo/client.

const (
	webVIP   = "10.96.7.20"
	waypoint = "web-wp"
	wpID     = "spiffe://cluster.local/ns/demo/sa/" + waypoint
)

var wpOnce sync.Once

// webWaypoint runs the waypoint and binds demo/web to it, once for the package.
func webWaypoint(t *testing.T) *State {
	t.Helper()
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	var err error
	wpOnce.Do(func() {
		ctx := context.Background()
		if _, err = ApplyWaypoint(ctx, e2eOpts, WaypointSpec{Name: waypoint, Namespace: "demo", For: "serviceaccount", Node: "node-a"}); err != nil {
			return
		}
		_, err = configdir.SetLabel(st.ConfigDir, configdir.Object{Kind: "ServiceAccount", Namespace: "demo", Name: "web"}, model.LabelUseWaypoint, waypoint)
	})
	if err != nil {
		t.Fatal(err)
	}
	client := pod(t, st, "demo", "client")
	// Bound: the web pods see the waypoint as their caller.
	wait.Until(t, settle, "traffic to web through the waypoint", func() error {
		e, err := get(client, "http://"+webVIP+"/")
		if err != nil {
			return err
		}
		if e.Identity != wpID {
			return fmt.Errorf("web saw %q, want the waypoint %s", e.Identity, wpID)
		}
		return nil
	})
	return st
}

// waypointHasWeights reports whether the waypoint's /config_dump routes Service svc
// ("<namespace>/<hostname>" prefix) with backends weighted exactly as weights.
func waypointHasWeights(svc string, weights ...uint32) error {
	st, err := LoadState(e2eOpts.Dir)
	if err != nil {
		return err
	}
	var admin string
	for _, w := range st.Waypoints {
		if w.Namespace == "demo" && w.Name == waypoint {
			admin = w.AdminAddr
		}
	}
	if admin == "" {
		return fmt.Errorf("lab state has no waypoint demo/%s", waypoint)
	}
	resp, err := http.Get("http://" + admin + "/config_dump")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var dump struct {
		Routes map[string]struct {
			Service string
			Routes  []struct {
				Name     string
				Backends []struct{ Weight uint32 }
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		return fmt.Errorf("waypoint /config_dump: %w", err)
	}
	for _, tbl := range dump.Routes {
		if !strings.HasPrefix(tbl.Service, svc) {
			continue
		}
		for _, r := range tbl.Routes {
			got := make([]uint32, 0, len(r.Backends))
			for _, b := range r.Backends {
				got = append(got, b.Weight)
			}
			if slices.Equal(got, weights) {
				return nil
			}
		}
		return fmt.Errorf("waypoint routes %s as %+v, want weights %v", svc, tbl.Routes, weights)
	}
	return fmt.Errorf("waypoint has no route for %s yet", svc)
}

// call makes one request from pod and returns the status and the echo's pod, if any.
func call(from *PodState, method, url string) (int, string, error) {
	if !strings.Contains(url, "?") {
		url += "?format=json"
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := Client(from.NetNS, 5*time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Ambit-Pod"), nil
}

func TestLabWaypointSplit(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/web-split.yaml")
	// The waypoint holds the 90/10 rule before any request counts: a sample of calls alone
	// cannot tell a 50/50 balance from the split often enough.
	wait.Until(t, settle, "the split in the waypoint's config", func() error {
		return waypointHasWeights("demo/web", 90, 10)
	})
	wait.Until(t, settle, "the split in force", func() error {
		n := map[string]int{}
		for i := 0; i < 20; i++ {
			_, p, err := call(client, "GET", "http://"+webVIP+"/")
			if err != nil {
				return err
			}
			n[p]++
		}
		if n["demo/web-v1"] < 14 {
			return fmt.Errorf("20 calls: %v", n)
		}
		return nil
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
			code, p, err := call(client, "GET", "http://"+webVIP+"/")
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
	if v1 < 87 || v1 > 93 {
		t.Fatalf("90/10 split over %d requests: %v = %.1f%% to v1, want 90 ± 3", total, n, v1)
	}
	t.Logf("90/10 split over %d requests: %.1f%% v1 (%v)", total, v1, n)
}

func TestLabWaypointRetriesAndTimeout(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/web-retry.yaml")
	// web-v1 answers 503 to 30% of requests; with 3 retries the client sees ≥ 99.9% success.
	flaky := "http://" + webVIP + "/flaky/30?pods=demo/web-v1"
	wait.Until(t, settle, "retries in force", func() error {
		for i := 0; i < 30; i++ {
			if code, _, err := call(client, "GET", flaky); err != nil || code != 200 {
				return fmt.Errorf("status %d, %v", code, err)
			}
		}
		return nil
	})
	const total = 1000
	fails := 0
	failedBy := map[string]int{} // the pod whose answer the client got, or the error
	for i := 0; i < total; i++ {
		if code, p, err := call(client, "GET", flaky); err != nil || code != 200 {
			fails++
			failedBy[fmt.Sprintf("%d from %q, %v", code, p, err)]++
		}
	}
	if ok := float64(total-fails) / total; ok < 0.999 {
		t.Fatalf("%d of %d requests failed through 3 retries (%.2f%% success, want ≥ 99.9%%): %v; the waypoint's ejections: %s",
			fails, total, ok*100, failedBy, ejections())
	}
	// A hung backend is cut at the route's timeout (1 s) with 504.
	start := time.Now()
	code, _, err := call(client, "GET", "http://"+webVIP+"/delay/10s")
	if err != nil || code != http.StatusGatewayTimeout {
		t.Fatalf("hung backend: status %d, %v; want 504", code, err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("504 after %v; the route timeout is 1 s", d)
	}
}

// ejections is what the waypoint web-wp logged of its endpoints' ejections, for a failure's
// message.
func ejections() string {
	b, err := os.ReadFile(filepath.Join(e2eOpts.Dir, "logs", "waypoint-demo-"+waypoint+".log"))
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "endpoint ejected") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "none logged"
	}
	return strings.Join(lines, "\n")
}

func TestLabWaypointL7Authorization(t *testing.T) {
	st := webWaypoint(t)
	client, other := pod(t, st, "demo", "client"), pod(t, st, "demo", "other")
	apply(t, "testdata/policies/web-l7-authz.yaml")
	wait.Until(t, settle, "L7 policy in force", func() error {
		if code, _, err := call(other, "POST", "http://"+webVIP+"/admin"); err != nil || code != http.StatusForbidden {
			return fmt.Errorf("POST /admin from other: %d, %v; want 403", code, err)
		}
		return nil
	})
	for _, from := range []*PodState{client, other} {
		if code, _, err := call(from, "GET", "http://"+webVIP+"/public"); err != nil || code != 200 {
			t.Fatalf("GET /public from %s: %d, %v", from.Name, code, err)
		}
	}
	if code, _, err := call(client, "POST", "http://"+webVIP+"/admin"); err != nil || code != 200 {
		t.Fatalf("POST /admin from client: %d, %v; the policy allows it", code, err)
	}
	// The denied request never reached a web pod: their logs do not show it. The echo
	// writes no log per request, so the check is the waypoint's answer: 403 with a body.
	resp, err := Client(other.NetNS, 5*time.Second).Post("http://"+webVIP+"/admin", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(strings.ToLower(string(body)), "denied") || resp.Header.Get("X-Ambit-Pod") != "" {
		t.Fatalf("denied request: %s, pod %q, body %q; want 403 from the waypoint, naming the denial", resp.Status, resp.Header.Get("X-Ambit-Pod"), body)
	}
}

// TestLabWaypointBypassRefused dials a bound pod's ztunnel directly, around the waypoint,
// with a valid mesh identity: the destination ztunnel accepts the bound workload's traffic
// only from its waypoint.
func TestLabWaypointBypassRefused(t *testing.T) {
	st := webWaypoint(t)
	web := pod(t, st, "demo", "web-v1")
	ca, err := identity.LoadOrCreateCA(filepath.Join(e2eOpts.Dir, "ca"), identity.CAOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	cert := identitytest.Issue(t, ca, clientID, time.Hour)
	cl, err := hbone.NewClient(hbone.ClientConfig{Certificate: func(context.Context, spiffeid.ID) (*tls.Certificate, error) { return cert, nil }, Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	webAddr := web.IP + ":8080"
	s, err := cl.Dial(ctx, hbone.Target{Source: clientID, Address: netip.MustParseAddrPort(web.IP + ":15008"),
		Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/web")}, Authority: netip.MustParseAddrPort(webAddr)})
	if err == nil {
		s.Close()
		t.Fatal("a client reached a waypoint-bound pod around its waypoint")
	}
	t.Logf("refused as expected: %v", err)
}

func TestLabWaypointHTTP2AndGRPC(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	// HTTP/2 with prior knowledge through the waypoint.
	tr := &http.Transport{Protocols: new(http.Protocols),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return DialIn(client.NetNS, addr, 5*time.Second)
		}}
	tr.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	resp, err := h2.Get("http://" + webVIP + "/")
	if err != nil {
		t.Fatalf("h2c through the waypoint: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("h2c: %s over %s", resp.Status, resp.Proto)
	}
	// gRPC through the waypoint: the health service of a web pod.
	conn, err := grpc.NewClient(webVIP+":9090", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return DialIn(client.NetNS, addr, 5*time.Second)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health through the waypoint: %v, %v", res, err)
	}
}

// TestLabControllerRunsWaypoints: a Gateway written by hand into the controller's folder is
// enough. The controller runs its waypoint in a pod of its own and records the pod's address
// in the Gateway's status; a waypoint that dies comes back; removing the Gateway stops it and
// removes its pod.
func TestLabControllerRunsWaypoints(t *testing.T) {
	st := e2eLab(t)
	const file = "testdata/policies/spare-waypoint.yaml"
	if _, err := Apply(e2eOpts.Dir, file); err != nil {
		t.Fatal(err)
	}
	applied := filepath.Join(st.ConfigDir, appliedName(file))
	var wp *WaypointState
	// The controller re-runs the lab every 10 s; a restart can take one period.
	waitLong := func(what string, check func() error) {
		t.Helper()
		wait.Until(t, 40*time.Second, what, check)
	}
	waitLong("the controller to run demo/spare-wp", func() error {
		var err error
		wp, err = runningWaypoint(context.Background(), e2eOpts.Dir, "demo", "spare-wp")
		return err
	})
	if wp.Node != "node-b" || !strings.HasPrefix(wp.IP, "10.78.2.") {
		t.Fatalf("waypoint runs on %s at %s, want node-b (its Gateway's %s) in 10.78.2.0/24", wp.Node, wp.IP, NodeAnnotation)
	}
	waitLong("the waypoint's address in its Gateway's status", func() error {
		b, err := os.ReadFile(applied)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "value: "+wp.IP) {
			return fmt.Errorf("%s has no status address %s:\n%s", applied, wp.IP, b)
		}
		return nil
	})
	node, err := NodeAdminAddr(e2eOpts.Dir, "node-b")
	if err != nil {
		t.Fatal(err)
	}
	waitLong("ztunnel node-b to know the waypoint's address", func() error {
		resp, err := http.Get("http://" + node + "/config_dump")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		b := string(raw)
		addr := base64.StdEncoding.EncodeToString(netip.MustParseAddr(wp.IP).AsSlice()) // protojson bytes
		if !strings.Contains(b, `"spare-wp"`) || !strings.Contains(b, addr) {
			return fmt.Errorf("node-b's config_dump has no waypoint spare-wp at %s", wp.IP)
		}
		return nil
	})

	old := wp.Proc.PID
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLong("the controller to restart the killed waypoint", func() error {
		var err error
		if wp, err = runningWaypoint(context.Background(), e2eOpts.Dir, "demo", "spare-wp"); err != nil {
			return err
		}
		if wp.Proc.PID == old {
			return fmt.Errorf("still pid %d", old)
		}
		return nil
	})
	t.Logf("waypoint killed (pid %d), restarted by the controller as pid %d on %s", old, wp.Proc.PID, wp.IP)

	if err := Delete(e2eOpts.Dir, file); err != nil {
		t.Fatal(err)
	}
	waitLong("the controller to stop the waypoint of the removed Gateway", func() error {
		st, err := LoadState(e2eOpts.Dir)
		if err != nil {
			return err
		}
		if w := st.waypoint("demo", "spare-wp"); w != nil {
			return fmt.Errorf("pid %d still runs", w.Proc.PID)
		}
		return nil
	})
	if alive(wp.Proc.PID) {
		t.Fatalf("waypoint pid %d still runs after its Gateway was removed", wp.Proc.PID)
	}
	if _, err := os.Stat(filepath.Join(st.ConfigDir, podFile("demo", "spare-wp"))); !os.IsNotExist(err) {
		t.Fatalf("the waypoint's pod file is left: %v", err)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "-wp-spare-wp") {
		t.Fatalf("the waypoint's network namespace is left:\n%s", out)
	}
}
