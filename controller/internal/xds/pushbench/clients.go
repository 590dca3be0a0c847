package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
)

// expectation is the change every client must apply before the controller is told "done".
type expectation struct {
	name, version string
	remaining     atomic.Int64
	done          chan struct{}
}

// proxyState is one client's Handler: like a proxy, it holds every resource it receives (the
// client has decoded the response: each resource's name, version and body; with
// -decode-resources also the body into its Go type), and it reports when it holds the whole
// mesh and when it has applied an expected change.
type proxyState struct {
	pods, services int
	synced         func()
	expect         *atomic.Pointer[expectation]

	held      map[string]map[string]xdsclient.Resource // type URL → name → resource
	wasSynced bool
}

func (p *proxyState) Apply(t string, upserts map[string]xdsclient.Resource, removals []string) error {
	h := p.held[t]
	if len(h) == 0 {
		// The first response of a type: the map the client built is handed over as is, as a
		// proxy would keep it rather than copy it.
		h = upserts
		p.held[t] = h
	} else {
		for n, r := range upserts {
			h[n] = r
		}
	}
	for _, n := range removals {
		delete(h, n)
	}
	if !p.wasSynced && len(p.held[configv1.WorkloadTypeURL]) >= p.pods && len(p.held[configv1.ServiceTypeURL]) >= p.services {
		p.wasSynced = true
		p.synced()
	}
	if e := p.expect.Load(); e != nil && t == configv1.WorkloadTypeURL {
		if r, ok := upserts[e.name]; ok && (e.version == "*" || r.Version == e.version) && e.remaining.Add(-1) == 0 {
			close(e.done)
		}
	}
	return nil
}

func runClients(cfg config, log *slog.Logger) error {
	root, err := os.ReadFile(filepath.Join(cfg.dir, "root.pem"))
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), root)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var expect atomic.Pointer[expectation]
	var syncedN atomic.Int64
	allSynced := make(chan struct{})
	var wg sync.WaitGroup
	var conns []*grpc.ClientConn
	defer func() {
		cancel()
		wg.Wait()
		for _, cc := range conns {
			cc.Close()
		}
	}()
	// The simulated proxies are one process standing in for a hundred machines, each of which
	// would collect its own small heap on its own cores. Here one collector would trace all
	// hundred heaps together, on the cores the controller needs: collect only when the
	// process nears a memory bound (clientsMemoryLimit).
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(clientsMemoryLimit(cfg.pods, cfg.clients))
	syncTimes := make([]time.Duration, cfg.clients)
	use0 := usage()
	start := time.Now()
	for i := range cfg.clients {
		node := nodeName(i)
		cc, err := xdsclient.Dial(xdsclient.DialOptions{
			Address: cfg.addr,
			Token:   xdsclient.TokenFile(filepath.Join(cfg.dir, "tokens", node)),
			Bundle:  bundle,
			Extra: []grpc.DialOption{grpc.WithInitialWindowSize(windowSize), grpc.WithInitialConnWindowSize(connWindowSize),
				grpc.WithDefaultCallOptions(grpc.ForceCodecV2(newClientCodec()))},
		})
		if err != nil {
			return err
		}
		conns = append(conns, cc)
		st := &proxyState{pods: cfg.pods, services: cfg.services, expect: &expect, held: map[string]map[string]xdsclient.Resource{},
			synced: func() {
				syncTimes[i] = time.Since(start)
				if syncedN.Add(1) == int64(cfg.clients) {
					close(allSynced)
				}
			}}
		c, err := xdsclient.NewClient(cc, xdsclient.Config{
			Node:     xdsclient.NodeInfo{ID: "ztunnel-" + node, Node: node, Kind: xdsclient.KindZtunnel},
			TypeURLs: configv1.TypeURLs,
			Handler:  st,
			// Lighter decoding: the response is decoded and every resource held, but its body
			// stays in wire form unless -decode-resources. A hundred proxies share two cores
			// here; in a mesh each decodes its bodies on its own node.
			SkipDecode: !cfg.decodeResources,
			Logger:     log,
		})
		if err != nil {
			return err
		}
		wg.Go(func() { _ = c.Run(ctx) })
	}
	select {
	case <-allSynced:
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("full sync: only %d of %d clients synced", syncedN.Load(), cfg.clients)
	}
	used := usage().sub(use0)
	fmt.Printf("synced %.1f %.1f %.1f %d\n", float64(time.Since(start).Microseconds())/1000, ms(used.cpu()), ms(used.sys), used.faults)
	slices.Sort(syncTimes)
	fmt.Fprintf(os.Stderr, "clients synced: first %v, median %v, last %v; %.0f ms of the clients' CPU (%.0f ms in the kernel, %d page faults)\n",
		syncTimes[0].Round(time.Millisecond), syncTimes[len(syncTimes)/2].Round(time.Millisecond), syncTimes[len(syncTimes)-1].Round(time.Millisecond),
		ms(used.cpu()), ms(used.sys), used.faults)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 1 && f[0] == "quit":
			return nil
		case len(f) == 3 && f[0] == "expect":
			e := &expectation{name: f[1], version: f[2], done: make(chan struct{})}
			e.remaining.Store(int64(cfg.clients))
			expect.Store(e)
			fmt.Println("ok")
			select {
			case <-e.done:
				fmt.Println("done")
			case <-time.After(time.Minute):
				return fmt.Errorf("change %s %s: %d clients did not apply it", e.name, e.version, e.remaining.Load())
			}
		default:
			return fmt.Errorf("unexpected command %q", in.Text())
		}
	}
	return in.Err()
}

// clientsMemoryLimit is the clients' memory bound: twice what they hold after a full sync,
// about 850 bytes per pod per client in wire form (a hundred clients of 10,000 pods hold
// 0.85 GiB), 5 KiB with -decode-resources; at least 4 GiB. A bound close to what they hold
// makes the collector run back to back.
func clientsMemoryLimit(pods, clients int) int64 {
	return max(4<<30, int64(pods)*int64(clients)*2*850)
}
