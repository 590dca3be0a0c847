package xds

import (
	"fmt"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// anyCache encodes each resource version once and shares the encoding between every proxy
// that receives it: with 100 proxies holding the same 10,000 workloads, marshalling per
// proxy would dominate a push.
type anyCache struct {
	m sync.Map // cacheKey → *discoveryv3.Resource
}

type cacheKey struct{ typeURL, name string }

func (c *anyCache) get(typeURL, name string, r Resource) (*discoveryv3.Resource, error) {
	k := cacheKey{typeURL, name}
	if v, ok := c.m.Load(k); ok {
		if res := v.(*discoveryv3.Resource); res.GetVersion() == r.Version {
			return res, nil
		}
	}
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
	res := &discoveryv3.Resource{Name: name, Version: r.Version, Resource: a}
	c.m.Store(k, res)
	return res, nil
}
