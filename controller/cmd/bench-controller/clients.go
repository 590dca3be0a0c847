package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	proxyxds "ambit.dev/proto/xds"
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

// proxyState is one client's Handler: it counts what it holds and reports expectations met.
type proxyState struct {
	pods, services int
	synced         func()
	expect         *atomic.Pointer[expectation]

	count     map[string]int
	wasSynced bool
}

func (p *proxyState) Apply(t string, upserts map[string]proxyxds.Resource, removals []string) error {
	// The benchmark never removes, and the full sync arrives in one response per type, so
	// counting upserts is counting what is held.
	if !p.wasSynced {
		p.count[t] += len(upserts)
		if p.count[configv1.WorkloadTypeURL] >= p.pods && p.count[configv1.ServiceTypeURL] >= p.services {
			p.wasSynced = true
			p.synced()
		}
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
	// The simulated proxies are one process standing in for a hundred machines; fewer
	// collections keep their garbage from competing with the controller for the CPU.
	debug.SetGCPercent(400)
	start := time.Now()
	for i := range cfg.clients {
		node := nodeName(i)
		cc, err := proxyxds.Dial(proxyxds.DialOptions{
			Address: cfg.addr,
			Token:   proxyxds.TokenFile(filepath.Join(cfg.dir, "tokens", node)),
			Bundle:  bundle,
			Extra:   []grpc.DialOption{grpc.WithInitialWindowSize(windowSize), grpc.WithInitialConnWindowSize(connWindowSize)},
		})
		if err != nil {
			return err
		}
		conns = append(conns, cc)
		st := &proxyState{pods: cfg.pods, services: cfg.services, expect: &expect, count: map[string]int{},
			synced: func() {
				if syncedN.Add(1) == int64(cfg.clients) {
					close(allSynced)
				}
			}}
		c, err := proxyxds.NewClient(cc, proxyxds.Config{
			Node:     proxyxds.NodeInfo{ID: "ztunnel-" + node, Node: node, Kind: proxyxds.KindZtunnel},
			TypeURLs: configv1.TypeURLs,
			Handler:  st,
			// A hundred proxies share two cores here; in a mesh each decodes on its own node.
			SkipDecode: true,
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
	fmt.Printf("synced %.1f\n", float64(time.Since(start).Microseconds())/1000)

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
