package xds

import (
	"strconv"

	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"google.golang.org/grpc"
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

	// The response itself is the same for every proxy taking this step, nonce included
	// (a nonce only has to tell apart the responses of one stream, and a stream takes a
	// step once), so it is marshalled once too.
	nonce    string
	version  string // system_version_info: the generation the delta was first needed for
	prepOnce sync.Once
	prepared *grpc.PreparedMsg
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
	mu   sync.Mutex
	m    map[deltaKey]*delta
	next uint64 // id of the next delta, for its nonce
}

const deltaCacheSize = 256

func mapPtr(m map[string]Resource) unsafe.Pointer {
	return reflect.ValueOf(m).UnsafePointer()
}

// get returns the delta from prev to next, computing it at most once.
func (c *deltaCache) get(s *Server, typeURL string, prev, next map[string]Resource, gen uint64) *delta {
	k := deltaKey{typeURL, mapPtr(prev), mapPtr(next)}
	c.mu.Lock()
	d, ok := c.m[k]
	if !ok {
		if c.m == nil || len(c.m) >= deltaCacheSize {
			c.m = make(map[deltaKey]*delta)
		}
		c.next++
		d = &delta{prev: prev, next: next, nonce: "d" + strconv.FormatUint(c.next, 10), version: strconv.FormatUint(gen, 10)}
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

// response returns the delta's response to type t, marshalled once with the first stream's
// codec (every stream of the server has the same one); nil if that failed, and the caller
// then sends it the ordinary way. A prepared message is never compressed; the per-message
// flag says so, which is valid on any stream.
func (d *delta) response(st stream, t string) *grpc.PreparedMsg {
	d.prepOnce.Do(func() {
		pm := &grpc.PreparedMsg{}
		if err := pm.Encode(st, d.message(t)); err == nil {
			d.prepared = pm
		}
	})
	return d.prepared
}

func (d *delta) message(t string) *discoveryv3.DeltaDiscoveryResponse {
	return &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl:           t,
		SystemVersionInfo: d.version,
		Resources:         d.res,
		RemovedResources:  d.removals,
		Nonce:             d.nonce,
	}
}
