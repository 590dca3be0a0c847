package model

import (
	"sort"

	configv1 "ambit.dev/proto/config/v1"
)

// Waypoints returns the waypoints of every ambit-waypoint Gateway the index holds, sorted by
// namespace and name: what the controller has to run (internal/waypointexec in the lab).
// The messages are shared: read them, never change them.
func (x *Index) Waypoints() []*configv1.Waypoint {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []*configv1.Waypoint
	for _, byName := range x.waypoints {
		for _, wp := range byName {
			out = append(out, wp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetNamespace() != out[j].GetNamespace() {
			return out[i].GetNamespace() < out[j].GetNamespace()
		}
		return out[i].GetName() < out[j].GetName()
	})
	return out
}
