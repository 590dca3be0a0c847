package xds

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

type stream = grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

// conn is one proxy's stream. Everything but the status block is owned by the goroutine
// running serve.
type conn struct {
	s     *Server
	st    stream
	proxy Proxy
	kick  chan struct{}

	types   map[string]*typeState
	order   []string // subscribed types, in subscription order
	desired map[string]map[string]Resource
	gen     *generation // the generation desired was computed for
	nonce   uint64

	mu          sync.Mutex
	connectedAt time.Time
	acked       bool
	ackedGen    uint64
	nacks       map[string]string // type URL → last NACK message, cleared by an ACK of that type
}

// typeState is what one subscribed type looks like on the proxy. What the proxy holds is
// either explicit (name → version, from initial_resource_versions) or, once a response has
// brought it exactly there, the versions of last, a map the Generator returned: then the next
// push is a delta between two Generator maps, shared with every proxy making the same step
// (diff.go), and the stream keeps no per-resource state of its own.
type typeState struct {
	explicit map[string]string   // name → version the proxy holds; nil when last says it
	last     map[string]Resource // when explicit is nil, the proxy holds exactly its versions
	pending  *pending            // the response awaiting ACK/NACK
	dirty    bool                // desired changed while pending
	rejected *generation         // generation whose response was NACKed; not resent until the next
	inSync   bool                // the proxy holds desired (or the difference was NACKed)
	// announced: a response of this type went out on this stream. A proxy that starts with
	// nothing gets one response per type even when the type is empty, so that it can tell
	// "nothing of this type" from "not received yet" (readiness).
	announced bool
}

type pending struct {
	want     map[string]Resource // the desired map the response brings the proxy to
	complete bool                // every resource of want that differed was sent
	nonce    string
	res      []*discoveryv3.Resource
	removals []string
}

// held returns the proxy's versions as a map (for the rare full comparison).
func (ts *typeState) held() map[string]string {
	if ts.explicit != nil {
		return ts.explicit
	}
	h := make(map[string]string, len(ts.last))
	for n, r := range ts.last {
		h[n] = r.Version
	}
	return h
}

func newConn(s *Server, st stream, p Proxy) *conn {
	return &conn{
		s:           s,
		st:          st,
		proxy:       p,
		kick:        make(chan struct{}, 1),
		types:       make(map[string]*typeState),
		connectedAt: time.Now(),
		nacks:       make(map[string]string),
	}
}

// notify wakes the stream for a new generation; never blocks.
func (c *conn) notify() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *conn) serve(ctx context.Context, first *discoveryv3.DeltaDiscoveryRequest) error {
	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest, 8)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := c.st.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	c.refresh()
	if err := c.handle(first); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-c.s.stopped:
			return status.Error(codes.Unavailable, "xds: controller shutting down")
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case r := <-reqs:
			if err := c.handle(r); err != nil {
				return err
			}
		case <-c.kick:
			if err := c.push(); err != nil {
				return err
			}
		}
	}
}

// refresh asks the Generator for the proxy's config at the current generation.
func (c *conn) refresh() {
	c.gen = c.s.version.Load()
	c.desired = c.s.gen.For(c.proxy)
}

// push handles a new generation: every type either sends its difference now or, with a
// response in flight, after the ACK.
func (c *conn) push() error {
	if c.s.version.Load() == c.gen {
		return nil
	}
	c.refresh()
	for _, t := range c.order {
		ts := c.types[t]
		if ts.pending != nil {
			ts.dirty = true
			continue
		}
		if err := c.send(t, ts); err != nil {
			return err
		}
	}
	c.updateStatus()
	return nil
}

func (c *conn) handle(r *discoveryv3.DeltaDiscoveryRequest) error {
	t := r.GetTypeUrl()
	if t == "" {
		return status.Error(codes.InvalidArgument, "xds: request without type_url")
	}
	ts := c.types[t]
	if r.GetResponseNonce() == "" {
		// A subscription. Every subscription is a wildcard; a repeated one changes nothing.
		if ts != nil {
			return nil
		}
		ts = &typeState{}
		if iv := r.GetInitialResourceVersions(); len(iv) > 0 {
			ts.explicit = maps.Clone(iv)
		}
		c.types[t] = ts
		c.order = append(c.order, t)
		slices.SortStableFunc(c.order, func(a, b string) int { return typeRank(a) - typeRank(b) })
		err := c.send(t, ts)
		c.updateStatus()
		return err
	}
	if ts == nil || ts.pending == nil || ts.pending.nonce != r.GetResponseNonce() {
		c.s.log.Debug("stale xds nonce", "id", c.proxy.ID, "type", t, "nonce", r.GetResponseNonce())
		return nil
	}
	p := ts.pending
	ts.pending = nil
	if d := r.GetErrorDetail(); d != nil {
		ts.rejected = c.gen
		c.s.metrics.nacks.WithLabelValues(shortType(t)).Inc()
		c.s.log.Warn("proxy rejected config", "id", c.proxy.ID, "node", c.proxy.Node, "type", t,
			"nonce", p.nonce, "version", c.gen.n, "error", d.GetMessage())
		c.mu.Lock()
		c.nacks[t] = d.GetMessage()
		c.mu.Unlock()
	} else {
		if p.complete {
			ts.explicit, ts.last = nil, p.want
		} else {
			h := maps.Clone(ts.held())
			for _, r := range p.res {
				h[r.GetName()] = r.GetVersion()
			}
			for _, name := range p.removals {
				delete(h, name)
			}
			ts.explicit, ts.last = h, nil
		}
		c.mu.Lock()
		delete(c.nacks, t)
		c.mu.Unlock()
	}
	var err error
	if ts.dirty {
		err = c.send(t, ts)
	} else {
		// What was sent was the whole difference to desired.
		ts.inSync = true
	}
	c.updateStatus()
	return err
}

// send sends type t's difference between desired and what the proxy holds, if there is one.
func (c *conn) send(t string, ts *typeState) error {
	ts.dirty = false
	if ts.rejected == c.gen {
		ts.inSync = true
		return nil
	}
	want := c.desired[t]
	var (
		res      []*discoveryv3.Resource
		removals []string
		complete = true
	)
	switch {
	case ts.explicit == nil && mapPtr(ts.last) == mapPtr(want):
		// Nothing changed for this type.
	case ts.explicit == nil:
		d := c.s.deltas.get(c.s, t, ts.last, want, c.gen.n)
		if len(d.res) == 0 && len(d.removals) == 0 {
			complete = d.complete
			break
		}
		var err error
		if pm := d.response(c.st, t); pm != nil {
			err = c.st.SendMsg(pm)
		} else {
			err = c.st.Send(d.message(t))
		}
		if err != nil {
			return err
		}
		c.sent(t, ts, &pending{want: want, complete: d.complete, nonce: d.nonce, res: d.res, removals: d.removals})
		return nil
	default:
		for name, r := range want {
			if v, ok := ts.explicit[name]; ok && v == r.Version {
				continue
			}
			a, err := c.s.encode(t, name, r)
			if err != nil {
				complete = false
				continue
			}
			res = append(res, a)
		}
		for name := range ts.explicit {
			if _, ok := want[name]; !ok {
				removals = append(removals, name)
			}
		}
	}
	if len(res) == 0 && len(removals) == 0 && (ts.announced || ts.explicit != nil) {
		ts.inSync = true
		if complete {
			ts.explicit, ts.last = nil, want
		}
		return nil
	}
	ts.inSync = false
	c.nonce++
	nonce := strconv.FormatUint(c.nonce, 10)
	resp := &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl:           t,
		SystemVersionInfo: strconv.FormatUint(c.gen.n, 10),
		Resources:         res,
		RemovedResources:  removals,
		Nonce:             nonce,
	}
	if err := c.st.Send(resp); err != nil {
		return err
	}
	c.sent(t, ts, &pending{want: want, complete: complete, nonce: nonce, res: res, removals: removals})
	return nil
}

// sent records a response awaiting its ACK.
func (c *conn) sent(t string, ts *typeState, p *pending) {
	ts.inSync = false
	ts.announced = true
	ts.pending = p
	c.s.metrics.pushes.WithLabelValues(shortType(t)).Inc()
	start := c.gen.start
	if start.Before(c.connectedAt) {
		start = c.connectedAt
	}
	c.s.metrics.pushTime.Observe(time.Since(start).Seconds())
}

func (c *conn) updateStatus() {
	synced := true
	for _, ts := range c.types {
		if ts.pending != nil || !ts.inSync {
			synced = false
			break
		}
	}
	c.mu.Lock()
	c.acked = synced
	c.ackedGen = c.gen.n
	c.mu.Unlock()
}

func (c *conn) status() ProxyStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := ProxyStatus{
		ID:          c.proxy.ID,
		Node:        c.proxy.Node,
		Kind:        c.proxy.Kind,
		Namespace:   c.proxy.Namespace,
		Name:        c.proxy.Name,
		ConnectedAt: c.connectedAt,
		Acked:       c.acked && len(c.nacks) == 0 && c.ackedGen == c.s.version.Load().n,
		Version:     strconv.FormatUint(c.ackedGen, 10),
	}
	if len(c.nacks) > 0 {
		var b strings.Builder
		for _, t := range slices.Sorted(maps.Keys(c.nacks)) {
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(shortType(t) + ": " + c.nacks[t])
		}
		ps.LastNack = b.String()
	}
	return ps
}

// typeRank orders types as configv1.TypeURLs does: referenced resources first.
func typeRank(t string) int {
	if i := slices.Index(configv1.TypeURLs, t); i >= 0 {
		return i
	}
	return len(configv1.TypeURLs)
}

// shortType turns a type URL into a metric label: "type.googleapis.com/ambit.config.v1.Workload"
// becomes "Workload".
func shortType(t string) string {
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		return t[i+1:]
	}
	return t
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
