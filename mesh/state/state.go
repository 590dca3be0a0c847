// Package state is a proxy's view of the mesh (ztunnel's and the waypoint's): the workloads, services and policies the
// controller pushed (or a local file gave), indexed for the per-connection lookups of the
// proxy: which workload owns an address, which endpoints a service VIP has, which policies
// apply to a destination. Updates replace whole resources; lookups never block on them
// for long.
package state

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
)

// RootNamespace holds mesh-wide (GLOBAL) policy and the mesh-wide PeerAuthentication.
const RootNamespace = "ambit-system"

// State holds the current config. The zero value is not usable; use New.
type State struct {
	mu         sync.RWMutex
	workloads  map[string]*configv1.Workload // by resource name
	byAddr     map[netip.Addr]*configv1.Workload
	services   map[string]*configv1.Service // by "<namespace>/<hostname>"
	byVIP      map[netip.Addr]*configv1.Service
	policies   map[string]*configv1.Authorization // by "<namespace>/<name>"
	waypoints  map[string]*configv1.Waypoint
	endpoints  map[string][]*configv1.Workload // service key → workloads, rebuilt lazily
	epStale    bool
	meshStrict bool
	watchers   []func()
}

// New returns an empty State.
func New() *State {
	return &State{
		workloads: map[string]*configv1.Workload{},
		byAddr:    map[netip.Addr]*configv1.Workload{},
		services:  map[string]*configv1.Service{},
		byVIP:     map[netip.Addr]*configv1.Service{},
		policies:  map[string]*configv1.Authorization{},
		waypoints: map[string]*configv1.Waypoint{},
	}
}

// Apply installs upserts and removals of one resource type. It checks every resource
// before changing anything, so a bad batch changes nothing (the xDS client NACKs it).
func (s *State) Apply(typeURL string, upserts map[string]proto.Message, removals []string) error {
	for name, m := range upserts {
		if err := validate(typeURL, name, m); err != nil {
			return err
		}
	}
	s.mu.Lock()
	watchers := s.watchers
	defer func() {
		for _, fn := range watchers {
			fn()
		}
	}()
	defer s.mu.Unlock()
	for _, name := range removals {
		s.removeLocked(typeURL, name)
	}
	for name, m := range upserts {
		s.removeLocked(typeURL, name)
		switch r := m.(type) {
		case *configv1.Workload:
			s.workloads[name] = r
			for _, a := range r.GetAddresses() {
				ip, _ := netip.AddrFromSlice(a)
				s.byAddr[ip.Unmap()] = r
			}
		case *configv1.Service:
			s.services[name] = r
			for _, a := range r.GetAddresses() {
				ip, _ := netip.AddrFromSlice(a.GetAddress())
				s.byVIP[ip.Unmap()] = r
			}
		case *configv1.Authorization:
			s.policies[name] = r
		case *configv1.Waypoint:
			s.waypoints[name] = r
		}
	}
	s.epStale = true
	return nil
}

func validate(typeURL, name string, m proto.Message) error {
	addr := func(b []byte, what string) error {
		if _, ok := netip.AddrFromSlice(b); !ok {
			return fmt.Errorf("%s %s: %s is not an IP address (%d bytes)", typeURL, name, what, len(b))
		}
		return nil
	}
	switch r := m.(type) {
	case *configv1.Workload:
		if typeURL != configv1.WorkloadTypeURL {
			break
		}
		for _, a := range r.GetAddresses() {
			if err := addr(a, "addresses"); err != nil {
				return err
			}
		}
		return nil
	case *configv1.Service:
		if typeURL != configv1.ServiceTypeURL {
			break
		}
		for _, a := range r.GetAddresses() {
			if err := addr(a.GetAddress(), "addresses"); err != nil {
				return err
			}
		}
		return nil
	case *configv1.Authorization:
		if typeURL != configv1.AuthorizationTypeURL {
			break
		}
		return nil
	case *configv1.Waypoint:
		if typeURL != configv1.WaypointTypeURL {
			break
		}
		return nil
	case *configv1.RouteConfig:
		return nil // a waypoint's business; ztunnel keeps none
	}
	return fmt.Errorf("resource %s: %T does not match type %s", name, m, typeURL)
}

func (s *State) removeLocked(typeURL, name string) {
	switch typeURL {
	case configv1.WorkloadTypeURL:
		if w := s.workloads[name]; w != nil {
			for _, a := range w.GetAddresses() {
				ip, _ := netip.AddrFromSlice(a)
				if s.byAddr[ip.Unmap()] == w {
					delete(s.byAddr, ip.Unmap())
				}
			}
			delete(s.workloads, name)
		}
	case configv1.ServiceTypeURL:
		if v := s.services[name]; v != nil {
			for _, a := range v.GetAddresses() {
				ip, _ := netip.AddrFromSlice(a.GetAddress())
				if s.byVIP[ip.Unmap()] == v {
					delete(s.byVIP, ip.Unmap())
				}
			}
			delete(s.services, name)
		}
	case configv1.AuthorizationTypeURL:
		delete(s.policies, name)
	case configv1.WaypointTypeURL:
		delete(s.waypoints, name)
	}
}

// Workload returns the workload that owns ip.
func (s *State) Workload(ip netip.Addr) (*configv1.Workload, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	w, ok := s.byAddr[ip.Unmap()]
	return w, ok
}

// WorkloadByUID returns the workload with the given pod UID.
func (s *State) WorkloadByUID(uid string) (*configv1.Workload, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, w := range s.workloads {
		if w.GetUid() == uid {
			return w, true
		}
	}
	return nil, false
}

// OnChange registers fn to run after every Apply.
func (s *State) OnChange(fn func()) {
	s.mu.Lock()
	s.watchers = append(s.watchers, fn)
	s.mu.Unlock()
}

// Dump returns every resource held, by type URL and name, for /config_dump.
func (s *State) Dump() map[string]map[string]proto.Message {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]map[string]proto.Message{
		configv1.WorkloadTypeURL: {}, configv1.ServiceTypeURL: {}, configv1.AuthorizationTypeURL: {}, configv1.WaypointTypeURL: {},
	}
	for k, v := range s.workloads {
		out[configv1.WorkloadTypeURL][k] = v
	}
	for k, v := range s.services {
		out[configv1.ServiceTypeURL][k] = v
	}
	for k, v := range s.policies {
		out[configv1.AuthorizationTypeURL][k] = v
	}
	for k, v := range s.waypoints {
		out[configv1.WaypointTypeURL][k] = v
	}
	return out
}

// Service returns the service whose VIP is ip.
func (s *State) Service(ip netip.Addr) (*configv1.Service, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.byVIP[ip.Unmap()]
	return v, ok
}

// Endpoint is one workload behind a service port.
type Endpoint struct {
	Workload *configv1.Workload
	Addr     netip.AddrPort // the workload's address and target port
}

// Endpoints lists the workloads behind svc's port, healthy ones first.
func (s *State) Endpoints(svc *configv1.Service, port uint16) []Endpoint {
	key := svc.GetNamespace() + "/" + svc.GetHostname()
	// Every outbound connection to a VIP comes here: read under the shared lock, and take
	// the exclusive one only to rebuild the index after a config change.
	s.mu.RLock()
	stale := s.epStale || s.endpoints == nil
	ws := s.endpoints[key]
	s.mu.RUnlock()
	if stale {
		s.mu.Lock()
		s.rebuildEndpointsLocked()
		ws = s.endpoints[key]
		s.mu.Unlock()
	}
	var healthy, unhealthy []Endpoint
	for _, w := range ws {
		if len(w.GetAddresses()) == 0 {
			continue
		}
		ip, _ := netip.AddrFromSlice(w.GetAddresses()[0])
		target := uint32(0)
		for _, p := range w.GetServices()[key].GetPorts() {
			if p.GetServicePort() == uint32(port) {
				target = p.GetTargetPort()
				if target == 0 {
					target = p.GetServicePort()
				}
			}
		}
		if target == 0 {
			continue
		}
		ep := Endpoint{Workload: w, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(target))}
		if w.GetStatus() == configv1.WorkloadStatus_HEALTHY {
			healthy = append(healthy, ep)
		} else {
			unhealthy = append(unhealthy, ep)
		}
	}
	if len(healthy) > 0 {
		return healthy
	}
	return unhealthy
}

// rebuildEndpointsLocked indexes workloads by the services that select them.
func (s *State) rebuildEndpointsLocked() {
	if !s.epStale && s.endpoints != nil {
		return
	}
	s.endpoints = map[string][]*configv1.Workload{}
	for _, w := range s.workloads {
		for k := range w.GetServices() {
			s.endpoints[k] = append(s.endpoints[k], w)
		}
	}
	for _, ws := range s.endpoints {
		sort.Slice(ws, func(i, j int) bool { return ws[i].GetUid() < ws[j].GetUid() })
	}
	s.epStale = false
}

// Policies returns the authorizations that apply to w: mesh-wide ones, its namespace's, and
// those selecting it.
func (s *State) Policies(w *configv1.Workload) []*configv1.Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*configv1.Authorization
	for _, p := range s.policies {
		switch p.GetScope() {
		case configv1.Authorization_GLOBAL:
			out = append(out, p)
		case configv1.Authorization_NAMESPACE:
			if p.GetNamespace() == w.GetNamespace() {
				out = append(out, p)
			}
		}
	}
	for _, name := range w.GetAuthorizationPolicies() {
		if p := s.policies[name]; p != nil && p.GetScope() == configv1.Authorization_WORKLOAD_SELECTOR {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].GetNamespace()+"/"+out[i].GetName() < out[j].GetNamespace()+"/"+out[j].GetName()
	})
	return out
}

// Strict reports whether plaintext to w must be refused.
func (s *State) Strict(w *configv1.Workload) bool {
	switch w.GetPeerAuthentication() {
	case configv1.PeerAuthenticationMode_STRICT:
		return true
	case configv1.PeerAuthenticationMode_PERMISSIVE:
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meshStrict
}

// SetMeshStrict sets the mesh-wide default mode for workloads without their own.
func (s *State) SetMeshStrict(strict bool) {
	s.mu.Lock()
	s.meshStrict = strict
	s.mu.Unlock()
}

// Counts reports how many resources of each kind are held, for /config_dump and metrics.
func (s *State) Counts() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return map[string]int{"workloads": len(s.workloads), "services": len(s.services), "policies": len(s.policies), "waypoints": len(s.waypoints)}
}

// ServiceByName returns the service with resource name "<namespace>/<hostname>".
func (s *State) ServiceByName(name string) (*configv1.Service, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.services[name]
	return v, ok
}

// Waypoint returns the waypoint with resource name "<namespace>/<name>".
func (s *State) Waypoint(name string) (*configv1.Waypoint, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	w, ok := s.waypoints[name]
	return w, ok
}

// Authorizations returns every authorization held, sorted by resource name. A waypoint
// gets only the policies that target it or the Services bound to it, and picks among them
// by their target_refs.
func (s *State) Authorizations() []*configv1.Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*configv1.Authorization, 0, len(s.policies))
	for _, p := range s.policies {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].GetNamespace()+"/"+out[i].GetName() < out[j].GetNamespace()+"/"+out[j].GetName()
	})
	return out
}
