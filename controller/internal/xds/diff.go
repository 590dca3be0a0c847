package xds

import (
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"reflect"
	"sync"
	"unsafe"
)

// The generator typically hands every proxy the same map for a type, and a new map only for
// the types a change touched. A proxy that holds exactly the previous map's versions needs
// exactly the difference between the two maps, so that difference is computed once per pair
// of maps and shared by every proxy making the same step: a push costs each proxy the size of
// the change, not the size of the mesh, and an untouched type costs nothing.

// delta is the difference from one desired map to the next.
type delta struct {
	once     sync.Once
	res      []*discoveryv3.Resource // encoded resources new in next, or with another version
	removals []string                // names gone from next
	complete bool                    // false when a resource failed to encode and is missing
	// prev and next are kept so their addresses, the cache key, cannot be reused while
	// the entry lives.
	prev, next map[string]Resource
}

type deltaKey struct {
	typeURL    string
	prev, next unsafe.Pointer
}

// deltaCache holds the recent deltas. It is small: deltas are useful only while proxies
// step through the same generations, and it is cleared when full.
type deltaCache struct {
	mu sync.Mutex
	m  map[deltaKey]*delta
}

const deltaCacheSize = 256

func mapPtr(m map[string]Resource) unsafe.Pointer {
	return reflect.ValueOf(m).UnsafePointer()
}

// get returns the delta from prev to next, computing it at most once.
func (c *deltaCache) get(s *Server, typeURL string, prev, next map[string]Resource) *delta {
	k := deltaKey{typeURL, mapPtr(prev), mapPtr(next)}
	c.mu.Lock()
	d, ok := c.m[k]
	if !ok {
		if c.m == nil || len(c.m) >= deltaCacheSize {
			c.m = make(map[deltaKey]*delta)
		}
		d = &delta{prev: prev, next: next}
		c.m[k] = d
	}
	c.mu.Unlock()
	d.once.Do(func() {
		d.complete = true
		for name, r := range next {
			if p, ok := prev[name]; ok && p.Version == r.Version {
				continue
			}
			a, err := s.encode(typeURL, name, r)
			if err != nil {
				d.complete = false
				continue
			}
			d.res = append(d.res, a)
		}
		for name := range prev {
			if _, ok := next[name]; !ok {
				d.removals = append(d.removals, name)
			}
		}
	})
	return d
}
