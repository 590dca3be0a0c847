// Package revoke ends the connections of identities that leave the mesh, for ztunnel and the
// waypoint alike. A certificate lives 24 hours, but an identity stops being valid as soon as
// nothing in the mesh carries it any more — its pods, its ServiceAccount or its namespace
// removed, or its workloads gone from the mesh. The pushed state says so: both proxies
// receive every Workload of the mesh and every Waypoint. When an identity that the state
// held disappears from it, a Tracker closes the live connections registered under it and
// refuses new ones until it comes back.
//
// Only an identity seen in the state and then gone is revoked: a peer the state never named
// (config not yet pushed, a proxy that just started) is left to policy, so that revocation
// never refuses traffic because config is late. A resource that is only updated keeps its
// identity, so its connections stay. The proxy's own identities (Config.Keep) are never
// revoked, whatever the state says.
package revoke

import (
	"io"
	"log/slog"
	"sync"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures a Tracker. State is required.
type Config struct {
	State *state.State
	// TrustDomain is used for workloads that name none.
	TrustDomain spiffeid.TrustDomain
	// Keep returns identities that are never revoked: the proxy's own. Nil keeps none.
	Keep func() []spiffeid.ID
	// Reporter is the metrics' reporter label: "destination" for ztunnel, "waypoint".
	Reporter string
	Metrics  *Metrics
	Logger   *slog.Logger
}

// Tracker follows the state's identities and the live connections that carry them.
type Tracker struct {
	cfg Config

	mu      sync.Mutex
	known   map[spiffeid.ID]bool // identities the state held at the last change
	revoked map[spiffeid.ID]bool // held once, gone now
	live    map[spiffeid.ID]map[*entry]struct{}
}

// entry is one tracked connection; it may carry several identities (a tunnel's peer and the
// original client it relays for).
type entry struct {
	c   io.Closer
	ids []spiffeid.ID
}

// New returns a Tracker that watches cfg.State from now on.
func New(cfg Config) *Tracker {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Tracker{cfg: cfg, revoked: map[spiffeid.ID]bool{}, live: map[spiffeid.ID]map[*entry]struct{}{}}
	t.known = Identities(cfg.State, cfg.TrustDomain)
	cfg.State.OnChange(t.onChange)
	return t
}

// Identities is every identity st vouches for: its workloads', the waypoints workloads and
// services are bound to, and the Waypoint resources'.
func Identities(st *state.State, td spiffeid.TrustDomain) map[spiffeid.ID]bool {
	ids := map[spiffeid.ID]bool{}
	add := func(s string) {
		if id, err := spiffeid.FromString(s); err == nil {
			ids[id] = true
		}
	}
	for _, res := range st.Dump() {
		for _, m := range res {
			switch r := m.(type) {
			case *configv1.Workload:
				if id, err := identity.WorkloadIdentity(r, td); err == nil {
					ids[id] = true
				}
				add(r.GetWaypoint().GetIdentity())
			case *configv1.Service:
				add(r.GetWaypoint().GetIdentity())
			case *configv1.Waypoint:
				add(r.GetIdentity())
			}
		}
	}
	return ids
}

func (t *Tracker) keep() map[spiffeid.ID]bool {
	k := map[spiffeid.ID]bool{}
	if t.cfg.Keep != nil {
		for _, id := range t.cfg.Keep() {
			k[id] = true
		}
	}
	return k
}

// onChange runs after every change of the state. The identities are read under t.mu, so
// that two changes applied concurrently cannot leave the older view in place.
func (t *Tracker) onChange() {
	keep := t.keep()
	t.mu.Lock()
	now := Identities(t.cfg.State, t.cfg.TrustDomain)
	var gone []spiffeid.ID
	for id := range t.known {
		if !now[id] && !keep[id] && !t.revoked[id] {
			t.revoked[id] = true
			gone = append(gone, id)
		}
	}
	for id := range t.revoked {
		if now[id] || keep[id] {
			delete(t.revoked, id)
		}
	}
	t.known = now
	closing := map[spiffeid.ID][]*entry{}
	for _, id := range gone {
		for e := range t.live[id] {
			closing[id] = append(closing[id], e)
			t.forgetLocked(e)
		}
	}
	t.mu.Unlock()
	// Closing writes to the network: outside the lock, so that a stuck peer delays no one.
	for _, id := range gone {
		for _, e := range closing[id] {
			e.c.Close()
		}
		t.cfg.Metrics.add(t.cfg.Reporter, id, ResultClosed, len(closing[id]))
		t.cfg.Logger.Info("identity revoked: no workload or waypoint of the mesh carries it any more",
			"identity", id.String(), "connections_closed", len(closing[id]))
	}
}

// Revoked reports whether id was in the mesh and has left it.
func (t *Tracker) Revoked(id spiffeid.ID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.revoked[id]
}

// Refuse reports whether a new connection carrying id must be refused because id is revoked,
// and counts the refusal. The caller answers and logs it.
func (t *Tracker) Refuse(id spiffeid.ID) bool {
	if !t.Revoked(id) {
		return false
	}
	t.cfg.Metrics.add(t.cfg.Reporter, id, ResultRefused, 1)
	return true
}

// Track registers c, a live connection carrying ids, to be closed when one of them is
// revoked. If one already is (the state changed since the caller checked), c is closed now
// and ok is false. Otherwise untrack must be called when the connection ends.
func (t *Tracker) Track(c io.Closer, ids ...spiffeid.ID) (untrack func(), ok bool) {
	e := &entry{c: c}
	for _, id := range ids {
		if !id.IsZero() && !containsID(e.ids, id) {
			e.ids = append(e.ids, id)
		}
	}
	t.mu.Lock()
	for _, id := range e.ids {
		if t.revoked[id] {
			t.mu.Unlock()
			c.Close()
			t.cfg.Metrics.add(t.cfg.Reporter, id, ResultClosed, 1)
			return func() {}, false
		}
	}
	for _, id := range e.ids {
		if t.live[id] == nil {
			t.live[id] = map[*entry]struct{}{}
		}
		t.live[id][e] = struct{}{}
	}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		t.forgetLocked(e)
		t.mu.Unlock()
	}, true
}

func (t *Tracker) forgetLocked(e *entry) {
	for _, id := range e.ids {
		delete(t.live[id], e)
		if len(t.live[id]) == 0 {
			delete(t.live, id)
		}
	}
}

// Live counts the tracked connections that carry id; the zero ID counts all of them.
func (t *Tracker) Live(id spiffeid.ID) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !id.IsZero() {
		return len(t.live[id])
	}
	all := map[*entry]struct{}{}
	for _, es := range t.live {
		for e := range es {
			all[e] = struct{}{}
		}
	}
	return len(all)
}

func containsID(ids []spiffeid.ID, id spiffeid.ID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
