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
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
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

// typeState is what one subscribed type looks like on the proxy.
type typeState struct {
	held     map[string]string // name → version the proxy holds
	pending  *pending          // the response awaiting ACK/NACK
	dirty    bool              // desired changed while pending
	rejected *generation       // generation whose response was NACKed; not resent until the next
	inSync   bool              // held equals desired (or the difference was NACKed)
	// last, when heldIsLast, is a desired map whose versions held equals exactly: the
	// starting point of a shared delta (see diff.go).
	last       map[string]Resource
	heldIsLast bool
}

type pending struct {
	want     map[string]Resource // the desired map the response brings the proxy to
	complete bool                // every resource of want that differed was sent
	nonce    string
	upserts  map[string]string
	removals []string
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
		ts = &typeState{held: maps.Clone(r.GetInitialResourceVersions())}
		if ts.held == nil {
			ts.held = map[string]string{}
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
		ts.heldIsLast = false
		c.s.metrics.nacks.WithLabelValues(shortType(t)).Inc()
		c.s.log.Warn("proxy rejected config", "id", c.proxy.ID, "node", c.proxy.Node, "type", t,
			"nonce", p.nonce, "version", c.gen.n, "error", d.GetMessage())
		c.mu.Lock()
		c.nacks[t] = d.GetMessage()
		c.mu.Unlock()
	} else {
		for name, v := range p.upserts {
			ts.held[name] = v
		}
		for _, name := range p.removals {
			delete(ts.held, name)
		}
		ts.last, ts.heldIsLast = p.want, p.complete
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

// send sends type t's difference between desired and held, if there is one.
func (c *conn) send(t string, ts *typeState) error {
	ts.dirty = false
	if ts.rejected == c.gen {
		ts.inSync = true
		return nil
	}
	want := c.desired[t]
	var res []*discoveryv3.Resource
	upserts := map[string]string{}
	encodeFailed := false
	add := func(name string, r Resource) {
		a, err := c.s.cache.get(t, name, r)
		if err != nil {
			encodeFailed = true
			// A resource that cannot be encoded is a controller bug; leave it out rather
			// than starve the proxy of everything else.
			c.s.log.Error("cannot encode resource", "type", t, "name", name, "error", err)
			return
		}
		res = append(res, a)
		upserts[name] = r.Version
	}
	var removals []string
	switch {
	case ts.heldIsLast && mapPtr(ts.last) == mapPtr(want):
		// Nothing changed for this type.
	case ts.heldIsLast && ts.last != nil && want != nil:
		d := c.s.deltas.get(ts.last, want)
		for _, name := range d.upserts {
			add(name, want[name])
		}
		removals = d.removals
	default:
		for name, r := range want {
			if v, ok := ts.held[name]; ok && v == r.Version {
				continue
			}
			add(name, r)
		}
		for name := range ts.held {
			if _, ok := want[name]; !ok {
				removals = append(removals, name)
			}
		}
	}
	if len(res) == 0 && len(removals) == 0 {
		ts.inSync = true
		// held now matches want, unless a resource failed to encode; then the next push
		// compares in full.
		ts.last, ts.heldIsLast = want, !encodeFailed
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
	ts.heldIsLast = false
	ts.pending = &pending{want: want, complete: !encodeFailed, nonce: nonce, upserts: upserts, removals: removals}
	c.s.metrics.pushes.WithLabelValues(shortType(t)).Inc()
	start := c.gen.start
	if start.Before(c.connectedAt) {
		start = c.connectedAt
	}
	c.s.metrics.pushTime.Observe(time.Since(start).Seconds())
	return nil
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
