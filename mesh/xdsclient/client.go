package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Client defaults.
const (
	DefaultMinBackoff = 250 * time.Millisecond
	// DefaultMaxBackoff keeps a proxy within a few seconds of a controller that comes back:
	// a handful of proxies per node retrying every 5 s costs the controller nothing.
	DefaultMaxBackoff = 5 * time.Second
)

// Resource is one named resource as the controller sent it.
type Resource struct {
	// Version is the controller's version of the resource; opaque to the proxy.
	Version string
	// Message is the decoded resource, of the Go type registered for its type URL; nil when
	// Config.SkipDecode is set.
	Message proto.Message
	// Raw is the resource as it came over the wire.
	Raw *anypb.Any
}

// Handler applies configuration. Apply gets one response's worth of one type: the resources
// added or changed, by name, and the names removed. It returns an error to reject the batch
// as a whole (a NACK); the proxy must then keep what it had for every name in it. Apply is
// called from Run's goroutine, one call at a time.
type Handler interface {
	Apply(typeURL string, upserts map[string]Resource, removals []string) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(typeURL string, upserts map[string]Resource, removals []string) error

// Apply calls f.
func (f HandlerFunc) Apply(typeURL string, upserts map[string]Resource, removals []string) error {
	return f(typeURL, upserts, removals)
}

// Config configures a Client.
type Config struct {
	// Node introduces the proxy to the controller. Required.
	Node NodeInfo
	// TypeURLs are the resource types to subscribe to, in the order the first requests go
	// out (e.g. configv1.TypeURLs). Required.
	TypeURLs []string
	// Handler applies what the controller sends. Required.
	Handler Handler
	// Logger; default discards.
	Logger *slog.Logger
	// SkipDecode leaves Resource.Message nil: the handler gets only Raw. For tools that
	// forward or count resources, and for benchmarks that simulate many proxies in one
	// process, where decoding would measure the simulation instead of the controller.
	SkipDecode bool
	// OnConnect, when set, is called each time a stream delivers its first response: the
	// controller is reachable (again). ztunnel uses it to retry failed certificate renewals
	// at once instead of at the end of their backoff. It must not block.
	OnConnect func()
	// MinBackoff is the first delay before reconnecting; it doubles up to MaxBackoff and
	// resets once a stream has delivered a response. Each delay is shortened by up to 20%
	// at random so proxies that lost the controller together do not return together.
	MinBackoff, MaxBackoff time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if err := c.Node.Validate(); err != nil {
		return c, fmt.Errorf("xds client config: %w", err)
	}
	if len(c.TypeURLs) == 0 {
		return c, errors.New("xds client config: no type URLs")
	}
	if c.Handler == nil {
		return c, errors.New("xds client config: no handler")
	}
	c.TypeURLs = slices.Clone(c.TypeURLs)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	return c, nil
}

// Client is the proxy side of delta xDS. Create it with NewClient and call Run.
type Client struct {
	cfg     Config
	ads     discoveryv3.AggregatedDiscoveryServiceClient
	running atomic.Bool

	connected atomic.Bool

	mu       sync.Mutex
	versions map[string]map[string]string // type URL → name → version the proxy has applied
}

// NewClient returns a Client that talks over conn (see Dial).
func NewClient(conn grpc.ClientConnInterface, cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	versions := make(map[string]map[string]string, len(cfg.TypeURLs))
	for _, t := range cfg.TypeURLs {
		versions[t] = map[string]string{}
	}
	return &Client{cfg: cfg, ads: discoveryv3.NewAggregatedDiscoveryServiceClient(conn), versions: versions}, nil
}

// Run keeps a stream to the controller open, reconnecting with backoff, until ctx ends; then
// it returns nil. What was applied stays applied while the controller is away.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xds client: Run called twice")
	}
	backoff := c.cfg.MinBackoff
	for {
		progressed, err := c.stream(ctx)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			backoff = c.cfg.MinBackoff
		}
		d := backoff - time.Duration(mrand.Int64N(int64(backoff)/5+1))
		c.cfg.Logger.Warn("xds stream ended", "node", c.cfg.Node.Node, "id", c.cfg.Node.ID, "retry_in", d, "error", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// Connected reports whether a stream is open and has delivered at least one response or
// was accepted.
func (c *Client) Connected() bool { return c.connected.Load() }

// Versions returns a copy of the applied versions: type URL → resource name → version.
func (c *Client) Versions() map[string]map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]map[string]string, len(c.versions))
	for t, v := range c.versions {
		out[t] = maps.Clone(v)
	}
	return out
}

// stream runs one stream. progressed reports whether the controller answered anything, which
// resets the backoff.
func (c *Client) stream(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	node := c.cfg.Node.Proto()
	for i, t := range c.cfg.TypeURLs {
		c.mu.Lock()
		initial := maps.Clone(c.versions[t])
		c.mu.Unlock()
		req := &discoveryv3.DeltaDiscoveryRequest{
			TypeUrl:                 t,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: initial,
		}
		if i == 0 {
			req.Node = node
		}
		if err := st.Send(req); err != nil {
			return false, fmt.Errorf("subscribe %s: %w", t, err)
		}
	}
	c.cfg.Logger.Info("xds stream open", "node", c.cfg.Node.Node, "id", c.cfg.Node.ID)
	for {
		resp, err := st.Recv()
		if err != nil {
			return progressed, fmt.Errorf("receive: %w", err)
		}
		if !progressed && c.cfg.OnConnect != nil {
			c.cfg.OnConnect()
		}
		progressed = true
		c.connected.Store(true)
		if err := st.Send(c.handle(resp)); err != nil {
			return progressed, fmt.Errorf("acknowledge %s: %w", resp.GetTypeUrl(), err)
		}
	}
}

// handle applies one response and returns the ACK or NACK for it.
func (c *Client) handle(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	t := resp.GetTypeUrl()
	ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	err := c.apply(resp)
	if err != nil {
		c.cfg.Logger.Warn("rejected xds response", "type", t, "nonce", resp.GetNonce(),
			"system_version", resp.GetSystemVersionInfo(), "error", err)
		ack.ErrorDetail = &discoveryv3.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		return ack
	}
	c.cfg.Logger.Debug("applied xds response", "type", t, "nonce", resp.GetNonce(),
		"system_version", resp.GetSystemVersionInfo(), "upserts", len(resp.GetResources()), "removals", len(resp.GetRemovedResources()))
	return ack
}

func (c *Client) apply(resp *discoveryv3.DeltaDiscoveryResponse) error {
	t := resp.GetTypeUrl()
	c.mu.Lock()
	_, subscribed := c.versions[t]
	c.mu.Unlock()
	if !subscribed {
		return fmt.Errorf("type %s was not subscribed", t)
	}
	upserts := make(map[string]Resource, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		name := r.GetName()
		if name == "" {
			return fmt.Errorf("resource %d of %s has no name", i, t)
		}
		a := r.GetResource()
		if a == nil {
			return fmt.Errorf("resource %s of %s has no body", name, t)
		}
		if a.GetTypeUrl() != t {
			return fmt.Errorf("resource %s has type %s in a response of type %s", name, a.GetTypeUrl(), t)
		}
		res := Resource{Version: r.GetVersion(), Raw: a}
		if !c.cfg.SkipDecode {
			m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
			if err != nil {
				return fmt.Errorf("resource %s of %s: %w", name, t, err)
			}
			res.Message = m
		}
		upserts[name] = res
	}
	removals := resp.GetRemovedResources()
	if err := c.cfg.Handler.Apply(t, upserts, removals); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	held := c.versions[t]
	if len(held) == 0 && len(upserts) > 0 {
		held = make(map[string]string, len(upserts))
		c.versions[t] = held
	}
	for name, r := range upserts {
		held[name] = r.Version
	}
	for _, name := range removals {
		delete(held, name)
	}
	return nil
}
