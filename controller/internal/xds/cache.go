package xds

import (
	"fmt"
	"sync"

	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// anyCache encodes each resource version once and shares the encoding between every proxy
// that receives it: with 100 proxies holding the same 10,000 workloads, marshalling per
// proxy would dominate a push. Proxies connecting together wait for one encoding instead of
// each making its own.
type anyCache struct {
	m sync.Map // cacheKey → *cacheEntry
}

type cacheKey struct{ typeURL, name string }

type cacheEntry struct {
	version string
	once    sync.Once
	res     *discoveryv3.Resource
	err     error
}

func (c *anyCache) get(typeURL, name string, r Resource) (*discoveryv3.Resource, error) {
	k := cacheKey{typeURL, name}
	v, ok := c.m.Load(k)
	if !ok || v.(*cacheEntry).version != r.Version {
		e := &cacheEntry{version: r.Version}
		if ok {
			c.m.CompareAndSwap(k, v, e)
		} else {
			c.m.LoadOrStore(k, e)
		}
		v, _ = c.m.Load(k)
		if v.(*cacheEntry).version != r.Version {
			v = e // another version raced in; encode ours without caching it
		}
	}
	e := v.(*cacheEntry)
	e.once.Do(func() { e.res, e.err = encode(typeURL, name, r) })
	return e.res, e.err
}

func encode(typeURL, name string, r Resource) (*discoveryv3.Resource, error) {
	if r.Message == nil {
		return nil, fmt.Errorf("resource %s: nil message", name)
	}
	a, err := anypb.New(r.Message)
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", name, err)
	}
	if a.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("resource %s: message is %s, not %s", name, a.GetTypeUrl(), typeURL)
	}
	return &discoveryv3.Resource{Name: name, Version: r.Version, Resource: a}, nil
}

// encode returns the shared encoding of one resource; a resource that cannot be encoded is a
// controller bug, logged and left out rather than starving the proxy of everything else.
func (s *Server) encode(typeURL, name string, r Resource) (*discoveryv3.Resource, error) {
	res, err := s.cache.get(typeURL, name, r)
	if err != nil {
		s.log.Error("cannot encode resource", "type", typeURL, "name", name, "error", err)
	}
	return res, err
}
