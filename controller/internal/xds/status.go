package xds

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"
)

// ProxyStatus is one connected proxy, as `ambitctl proxy-status` shows it.
type ProxyStatus struct {
	ID          string    `json:"id"`
	Node        string    `json:"node"`
	Kind        string    `json:"kind"`
	Namespace   string    `json:"namespace,omitempty"`
	Name        string    `json:"name,omitempty"`
	ConnectedAt time.Time `json:"connectedAt"`
	// Acked reports that the proxy holds the latest generation of its config.
	Acked bool `json:"acked"`
	// Version is the generation the proxy's config was last computed for.
	Version string `json:"version"`
	// LastNack is the proxy's error for each type whose last response it rejected.
	LastNack string `json:"lastNack,omitempty"`
	// Controller is the controller replica (its pod) the proxy is connected to: set by
	// ambitctl, which asks every replica of a cluster's controller.
	Controller string `json:"controller,omitempty"`
}

// Proxies returns every connected proxy, sorted by node, then ID.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	out := make([]ProxyStatus, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c.status())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ProxyStatus) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID), a.ConnectedAt.Compare(b.ConnectedAt))
	})
	return out
}

// DebugPath is where the controller serves DebugHandler on its metrics port.
const DebugPath = "/debug/proxies"

// DebugHandler serves Proxies as a JSON array.
func (s *Server) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Proxies())
	})
}
