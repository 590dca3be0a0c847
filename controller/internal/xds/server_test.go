package xds

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	wl  = configv1.WorkloadTypeURL
	svc = configv1.ServiceTypeURL
)

// syncedEnv is an env with two workloads and a service, and one proxy holding them.
func syncedEnv(t *testing.T) (*env, *proxy) {
	t.Helper()
	e := newEnv(t)
	e.gen.setWorkload("w1", "1")
	e.gen.setWorkload("w2", "1")
	e.gen.setService("s1", "1")
	p := e.connect("node-a", "ztunnel-a", newRecorder())
	// Every subscribed type is announced, empty ones too, so the proxy can tell it is synced.
	want := map[string]map[string]string{wl: {"w1": "1", "w2": "1"}, svc: {"s1": "1"},
		configv1.AuthorizationTypeURL: {}, configv1.WaypointTypeURL: {}, configv1.RouteConfigTypeURL: {}}
	wait.Until(t, 5*time.Second, "initial sync", func() error {
		if got := p.rec.snapshot(); !reflect.DeepEqual(got, want) {
			return errors.New("proxy holds " + fmtState(got))
		}
		return nil
	})
	e.waitAcked(t, "ztunnel-a")
	drain(p.rec)
	return e, p
}

func fmtState(s map[string]map[string]string) string {
	var b strings.Builder
	for _, t := range slices.Sorted(maps.Keys(s)) {
		b.WriteString(shortType(t) + "{")
		for _, n := range slices.Sorted(maps.Keys(s[t])) {
			b.WriteString(n + "=" + s[t][n] + " ")
		}
		b.WriteString("} ")
	}
	return b.String()
}

func drain(r *recorder) {
	for {
		select {
		case <-r.calls:
		default:
			return
		}
	}
}

func TestInitialSync(t *testing.T) {
	e, p := syncedEnv(t)
	if got := p.client.Versions()[wl]; !reflect.DeepEqual(got, map[string]string{"w1": "1", "w2": "1"}) {
		t.Errorf("client versions = %v", got)
	}
	st, err := e.proxyStatus("ztunnel-a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "node-a" || st.Kind != xdsclient.KindZtunnel || st.LastNack != "" || st.ConnectedAt.IsZero() {
		t.Errorf("status = %+v", st)
	}
	metrics := map[string]float64{}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				metrics[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				metrics[mf.GetName()] += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				metrics[mf.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"ambit_xds_connected_proxies":     1,
		"ambit_xds_pushes_total":          5, // Workload and Service, and the three empty types announced
		"ambit_xds_push_duration_seconds": 5,
	}
	for name, v := range want {
		if metrics[name] != v {
			t.Errorf("%s = %v, want %v", name, metrics[name], v)
		}
	}
}

// TestManyProxiesShareDeltas: proxies that hold the same config step through the same
// delta, and each gets exactly the change.
func TestManyProxiesShareDeltas(t *testing.T) {
	e := newEnv(t)
	for i := range 50 {
		e.gen.setWorkload("w"+strconv.Itoa(i), "1")
	}
	var ps []*proxy
	for i := range 5 {
		node := "node-a"
		if i%2 == 1 {
			node = "node-b"
		}
		ps = append(ps, e.connect(node, "p"+strconv.Itoa(i), newRecorder()))
	}
	for i, p := range ps {
		wait.Until(t, 5*time.Second, "sync", func() error {
			if n := len(p.rec.snapshot()[wl]); n != 50 {
				return errors.New("holds " + strconv.Itoa(n))
			}
			return nil
		})
		e.waitAcked(t, "p"+strconv.Itoa(i))
		drain(p.rec)
	}
	for round := 2; round < 6; round++ {
		v := strconv.Itoa(round)
		e.gen.setWorkload("w7", v)
		e.gen.delete(wl, "w"+strconv.Itoa(40+round))
		e.srv.Push()
		for _, p := range ps {
			got := p.rec.next(t)
			want := applyCall{typeURL: wl, upserts: map[string]string{"w7": v}, removals: []string{"w" + strconv.Itoa(40+round)}}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d: Apply = %+v, want %+v", round, got, want)
			}
		}
	}
	for i := range ps {
		e.waitAcked(t, "p"+strconv.Itoa(i))
	}
}

func TestIncremental(t *testing.T) {
	tests := []struct {
		name   string
		change func(g *fakeGen)
		want   applyCall
	}{
		{"update sends only the changed resource", func(g *fakeGen) { g.setWorkload("w2", "2") },
			applyCall{typeURL: wl, upserts: map[string]string{"w2": "2"}}},
		{"add sends only the new resource", func(g *fakeGen) { g.setWorkload("w3", "1") },
			applyCall{typeURL: wl, upserts: map[string]string{"w3": "1"}}},
		{"removal sends only the name", func(g *fakeGen) { g.delete(wl, "w1") },
			applyCall{typeURL: wl, upserts: map[string]string{}, removals: []string{"w1"}}},
		{"other type", func(g *fakeGen) { g.setService("s1", "7") },
			applyCall{typeURL: svc, upserts: map[string]string{"s1": "7"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, p := syncedEnv(t)
			tc.change(e.gen)
			e.srv.Push()
			got := p.rec.next(t)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Apply = %+v, want %+v", got, tc.want)
			}
			p.rec.none(t, 100*time.Millisecond)
			e.waitAcked(t, "ztunnel-a")
		})
	}
}

func TestPushWithoutChangeSendsNothing(t *testing.T) {
	e, p := syncedEnv(t)
	for range 5 {
		e.srv.Push()
	}
	p.rec.none(t, 200*time.Millisecond)
	e.waitAcked(t, "ztunnel-a")
}

func TestNack(t *testing.T) {
	e, p := syncedEnv(t)
	p.rec.mu.Lock()
	p.rec.reject = func(_ string, up map[string]xdsclient.Resource) error {
		for _, r := range up {
			if r.Version == "bad" {
				return errors.New("unknown enum value")
			}
		}
		return nil
	}
	p.rec.mu.Unlock()

	e.gen.setWorkload("w1", "bad")
	e.srv.Push()
	if got := p.rec.next(t); got.upserts["w1"] != "bad" {
		t.Fatalf("Apply = %+v", got)
	}
	wait.Until(t, 5*time.Second, "nack reported", func() error {
		st, err := e.proxyStatus("ztunnel-a")
		if err != nil {
			return err
		}
		if !strings.Contains(st.LastNack, "unknown enum value") || st.Acked {
			return errors.New("status " + st.LastNack)
		}
		return nil
	})
	if v := p.client.Versions()[wl]["w1"]; v != "1" {
		t.Errorf("client advanced to %q after a NACK", v)
	}
	// The rejected version is not retried until the next push: no loop.
	p.rec.none(t, 150*time.Millisecond)

	// A push without a fix resends the still-missing resource once.
	e.srv.Push()
	if got := p.rec.next(t); got.upserts["w1"] != "bad" {
		t.Fatalf("Apply after second push = %+v", got)
	}
	p.rec.none(t, 100*time.Millisecond)

	// The fix is accepted; the server had kept the proxy at version 1, so w1 is sent again.
	e.gen.setWorkload("w1", "3")
	e.srv.Push()
	if got := p.rec.next(t); !reflect.DeepEqual(got.upserts, map[string]string{"w1": "3"}) {
		t.Fatalf("Apply after fix = %+v", got)
	}
	e.waitAcked(t, "ztunnel-a")
	st, _ := e.proxyStatus("ztunnel-a")
	if st.LastNack != "" {
		t.Errorf("LastNack after the fix = %q", st.LastNack)
	}
}

func TestReconnect(t *testing.T) {
	tests := []struct {
		name   string
		change func(g *fakeGen)
		want   []applyCall
	}{
		{"nothing changed", func(*fakeGen) {}, nil},
		{"one update and one removal", func(g *fakeGen) { g.setWorkload("w1", "2"); g.delete(svc, "s1") }, []applyCall{
			{typeURL: svc, upserts: map[string]string{}, removals: []string{"s1"}},
			{typeURL: wl, upserts: map[string]string{"w1": "2"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, p := syncedEnv(t)
			addr := e.addr
			e.stop()
			// The proxy keeps its config while the controller is away.
			time.Sleep(100 * time.Millisecond)
			if got := p.rec.snapshot(); len(got[wl]) != 2 || len(got[svc]) != 1 {
				t.Fatalf("proxy lost config while disconnected: %s", fmtState(got))
			}
			tc.change(e.gen)
			e.start(addr) // a restarted controller: fresh server, no memory of the proxy
			e.waitAcked(t, "ztunnel-a")
			var got []applyCall
			for range tc.want {
				got = append(got, p.rec.nextChange(t))
			}
			p.rec.noChange(t, 200*time.Millisecond)
			slices.SortFunc(got, func(a, b applyCall) int { return strings.Compare(a.typeURL, b.typeURL) })
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Apply calls after reconnect = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	e := newEnv(t)
	e.gen.setWorkload("w1", "1")
	node := func(n string) *discoveryv3.DeltaDiscoveryRequest {
		return &discoveryv3.DeltaDiscoveryRequest{
			TypeUrl: wl,
			Node:    xdsclient.NodeInfo{ID: "z", Node: n, Kind: xdsclient.KindZtunnel}.Proto(),
		}
	}
	waypoint := func(ns, name string) *discoveryv3.DeltaDiscoveryRequest {
		return &discoveryv3.DeltaDiscoveryRequest{
			TypeUrl: wl,
			Node: xdsclient.NodeInfo{ID: "w", Node: "node-a", Kind: xdsclient.KindWaypoint,
				WaypointNamespace: ns, WaypointName: name}.Proto(),
		}
	}
	tests := []struct {
		name  string
		token string
		first *discoveryv3.DeltaDiscoveryRequest
		want  codes.Code
	}{
		{"ok", e.token("node-a"), node("node-a"), codes.OK},
		{"claims another node", e.token("node-a"), node("node-b"), codes.PermissionDenied},
		{"forged token", "forged", node("node-a"), codes.Unauthenticated},
		{"empty token", "", node("node-a"), codes.Unauthenticated},
		{"no node", e.token("node-a"), &discoveryv3.DeltaDiscoveryRequest{TypeUrl: wl}, codes.InvalidArgument},
		// A waypoint's own token is good for that waypoint's config only.
		{"waypoint's token, itself", waypointToken, waypoint("shop", "wp"), codes.OK},
		{"waypoint's token, another waypoint", waypointToken, waypoint("shop", "other"), codes.PermissionDenied},
		{"waypoint's token, same name elsewhere", waypointToken, waypoint("prod", "wp"), codes.PermissionDenied},
		{"waypoint's token, as a ztunnel", waypointToken, node("node-a"), codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := e.dial(tc.token)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// The server may refuse before reading; Recv then carries the status.
			if err := st.Send(tc.first); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if status.Code(err) != tc.want {
				t.Fatalf("Recv = %v, %v; want code %v", resp, err, tc.want)
			}
			if tc.want == codes.OK && len(resp.GetResources()) != 1 {
				t.Errorf("resources = %v", resp.GetResources())
			}
		})
	}
}

func TestDebugHandler(t *testing.T) {
	e, _ := syncedEnv(t)
	rr := httptest.NewRecorder()
	e.srv.DebugHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, DebugPath, nil))
	if rr.Code != http.StatusOK {
		t.Fatalf("status %d", rr.Code)
	}
	var got []ProxyStatus
	if err := json.Unmarshal(rr.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "ztunnel-a" || got[0].Node != "node-a" || !got[0].Acked {
		t.Errorf("debug = %s", rr.Body.String())
	}
}

func TestWaypointIdentityReachesGenerator(t *testing.T) {
	e := newEnv(t)
	e.gen.setWorkload("w1", "1")
	info := xdsclient.NodeInfo{ID: "wp-0", Node: "node-b", Kind: xdsclient.KindWaypoint, WaypointNamespace: "shop", WaypointName: "shop-waypoint"}
	p := e.connectAs(info, newRecorder())
	p.rec.next(t)
	e.waitAcked(t, "wp-0")
	e.gen.mu.Lock()
	got := e.gen.seen["wp-0"]
	e.gen.mu.Unlock()
	want := Proxy{ID: "wp-0", Node: "node-b", Kind: xdsclient.KindWaypoint, Namespace: "shop", Name: "shop-waypoint"}
	if got != want {
		t.Errorf("Generator saw %+v, want %+v", got, want)
	}
	st, err := e.proxyStatus("wp-0")
	if err != nil || st.Kind != xdsclient.KindWaypoint || st.Namespace != "shop" || st.Name != "shop-waypoint" {
		t.Errorf("status = %+v, %v", st, err)
	}
}
