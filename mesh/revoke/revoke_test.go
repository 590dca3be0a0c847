package revoke

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/mesh/revoke/revoketest"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func sa(name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/shop/sa/"+name) }

func workload(name, ip, serviceAccount string) *configv1.Workload {
	return &configv1.Workload{Uid: name, Name: name, Namespace: "shop", ServiceAccount: serviceAccount,
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}}
}

type fixture struct {
	t   *testing.T
	st  *state.State
	tr  *Tracker
	reg *prometheus.Registry
}

func newFixture(t *testing.T, keep ...spiffeid.ID) *fixture {
	f := &fixture{t: t, st: state.New(), reg: prometheus.NewRegistry()}
	f.apply(configv1.WorkloadTypeURL, map[string]proto.Message{
		"a": workload("a", "10.0.0.1", "alice"), "b": workload("b", "10.0.0.2", "bob"),
		"b2": workload("b2", "10.0.0.3", "bob"),
		"w": &configv1.Workload{Uid: "w", Name: "w", Namespace: "shop", ServiceAccount: "web",
			Waypoint: &configv1.GatewayAddress{Identity: sa("waypoint").String()}},
	})
	f.apply(configv1.WaypointTypeURL, map[string]proto.Message{"shop/gw": &configv1.Waypoint{Name: "gw", Namespace: "shop", Identity: sa("gw").String()}})
	f.tr = New(Config{State: f.st, TrustDomain: td, Reporter: "test", Metrics: NewMetrics(f.reg),
		Keep: func() []spiffeid.ID { return keep }})
	return f
}

func (f *fixture) apply(typeURL string, upserts map[string]proto.Message, removals ...string) {
	f.t.Helper()
	if err := f.st.Apply(typeURL, upserts, removals); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) count(id spiffeid.ID, result string) float64 {
	return revoketest.Count(f.reg, "test", id, result)
}

// conn is a real connection: the test sees whether the Tracker closed it by reading the
// other end.
func conn(t *testing.T) (mine, peer net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func closed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

func TestIdentities(t *testing.T) {
	f := newFixture(t)
	got := Identities(f.st, td)
	for _, id := range []spiffeid.ID{sa("alice"), sa("bob"), sa("web"), sa("waypoint"), sa("gw")} {
		if !got[id] {
			t.Errorf("%s missing from %v", id, got)
		}
	}
	if len(got) != 5 {
		t.Errorf("identities %v, want 5", got)
	}
}

func TestRevocation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		keep    []spiffeid.ID
		change  func(f *fixture)
		revoked []spiffeid.ID
		kept    []spiffeid.ID
	}{
		{name: "last workload of an identity removed", change: func(f *fixture) {
			f.apply(configv1.WorkloadTypeURL, nil, "a")
		}, revoked: []spiffeid.ID{sa("alice")}, kept: []spiffeid.ID{sa("bob")}},
		{name: "one of two workloads removed", change: func(f *fixture) {
			f.apply(configv1.WorkloadTypeURL, nil, "b")
		}, kept: []spiffeid.ID{sa("bob"), sa("alice")}},
		{name: "workload re-pushed with other labels and address", change: func(f *fixture) {
			w := workload("a", "10.0.0.9", "alice")
			w.CanonicalRevision = "v2"
			f.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"a": w})
		}, kept: []spiffeid.ID{sa("alice")}},
		{name: "removed and re-added in one batch", change: func(f *fixture) {
			f.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"a2": workload("a2", "10.0.0.8", "alice")}, "a")
		}, kept: []spiffeid.ID{sa("alice")}},
		{name: "service account changed", change: func(f *fixture) {
			f.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"a": workload("a", "10.0.0.1", "carol")})
		}, revoked: []spiffeid.ID{sa("alice")}, kept: []spiffeid.ID{sa("carol")}},
		{name: "waypoint kept by its Waypoint resource", change: func(f *fixture) {
			f.apply(configv1.WaypointTypeURL, map[string]proto.Message{"shop/waypoint": &configv1.Waypoint{Name: "waypoint", Namespace: "shop", Identity: sa("waypoint").String()}})
			f.apply(configv1.WorkloadTypeURL, nil, "w")
		}, revoked: []spiffeid.ID{sa("web")}, kept: []spiffeid.ID{sa("waypoint"), sa("gw")}},
		{name: "the proxy's own identity is never revoked", keep: []spiffeid.ID{sa("gw"), sa("alice")}, change: func(f *fixture) {
			f.apply(configv1.WaypointTypeURL, nil, "shop/gw")
			f.apply(configv1.WorkloadTypeURL, nil, "a")
		}, kept: []spiffeid.ID{sa("gw"), sa("alice")}},
		{name: "an identity the state never named", change: func(f *fixture) {
			f.apply(configv1.WorkloadTypeURL, nil, "b")
		}, kept: []spiffeid.ID{sa("stranger"), spiffeid.RequireFromPath(td, "/ns/ambit-system/sa/ztunnel")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.keep...)
			live := map[spiffeid.ID]net.Conn{}
			for _, id := range append(append([]spiffeid.ID{}, tc.revoked...), tc.kept...) {
				mine, peer := conn(t)
				if _, ok := f.tr.Track(mine, id); !ok {
					t.Fatalf("%s refused before any change", id)
				}
				live[id] = peer
			}
			tc.change(f)
			for _, id := range tc.revoked {
				if !f.tr.Revoked(id) || !closed(live[id]) || f.tr.Live(id) != 0 {
					t.Errorf("%s: revoked %v, connection closed %v, %d still tracked; want revoked, closed, 0",
						id, f.tr.Revoked(id), closed(live[id]), f.tr.Live(id))
				}
				if got := f.count(id, ResultClosed); got != 1 {
					t.Errorf("%s: closed count %v, want 1", id, got)
				}
				if !f.tr.Refuse(id) || f.count(id, ResultRefused) != 1 {
					t.Errorf("%s: a new connection is not refused (count %v)", id, f.count(id, ResultRefused))
				}
				mine, peer := conn(t)
				if _, ok := f.tr.Track(mine, sa("bob"), id); ok || !closed(peer) {
					t.Errorf("%s: a connection that also carries it was tracked", id)
				}
			}
			for _, id := range tc.kept {
				if f.tr.Revoked(id) || f.tr.Refuse(id) || closed(live[id]) || f.tr.Live(id) != 1 {
					t.Errorf("%s: revoked %v, connection closed %v, tracked %d; want kept", id, f.tr.Revoked(id), closed(live[id]), f.tr.Live(id))
				}
			}
		})
	}
}

// TestComesBack: a revoked identity whose workload returns is served again.
func TestComesBack(t *testing.T) {
	f := newFixture(t)
	f.apply(configv1.WorkloadTypeURL, nil, "a")
	if !f.tr.Revoked(sa("alice")) {
		t.Fatal("alice not revoked")
	}
	f.apply(configv1.WorkloadTypeURL, map[string]proto.Message{"a": workload("a", "10.0.0.1", "alice")})
	mine, peer := conn(t)
	untrack, ok := f.tr.Track(mine, sa("alice"))
	if f.tr.Revoked(sa("alice")) || !ok || closed(peer) {
		t.Fatal("alice still refused after her workload came back")
	}
	untrack()
	if n := f.tr.Live(spiffeid.ID{}); n != 0 {
		t.Fatalf("%d connections tracked after untrack", n)
	}
}

// TestEntryWithTwoIdentities: a connection tracked under a peer and the client it relays for
// is closed once, when either is revoked, and forgotten under both.
func TestEntryWithTwoIdentities(t *testing.T) {
	f := newFixture(t)
	var n atomic.Int32
	c := closerFunc(func() error { n.Add(1); return nil })
	if _, ok := f.tr.Track(c, sa("bob"), sa("alice"), sa("alice")); !ok {
		t.Fatal("refused")
	}
	if f.tr.Live(sa("alice")) != 1 || f.tr.Live(sa("bob")) != 1 || f.tr.Live(spiffeid.ID{}) != 1 {
		t.Fatalf("tracked %d/%d/%d, want 1 each", f.tr.Live(sa("alice")), f.tr.Live(sa("bob")), f.tr.Live(spiffeid.ID{}))
	}
	f.apply(configv1.WorkloadTypeURL, nil, "a")
	if n.Load() != 1 || f.tr.Live(sa("bob")) != 0 {
		t.Fatalf("closed %d times, %d still tracked under bob; want 1, 0", n.Load(), f.tr.Live(sa("bob")))
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
