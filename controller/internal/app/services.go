package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"ambit.dev/controller/internal/caserver"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/xds"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/xdsclient"
	configv1 "ambit.dev/proto/config/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
)

// GRPCServices returns the hooks that put the delta xDS server and the CA service on the
// controller's one gRPC listener (GRPCAddr, TLS). Proxies authenticate with the tokens in
// tokenDir in folder mode, and with TokenReview in Kubernetes mode: ztunnels with their
// ServiceAccount's tokens (for their node), waypoints with their own (for themselves only).
func GRPCServices(tokenDir string) (func(Deps) (PushServer, error), func(Deps) (CAService, error)) {
	var push *xds.Server
	var auth caserver.Authenticator
	authFor := func(d Deps) (caserver.Authenticator, error) {
		if auth != nil {
			return auth, nil
		}
		switch {
		case d.Kube != nil:
			auth = &caserver.KubeAuthenticator{Client: d.Kube,
				Waypoints: func(ns, name string) bool { return isWaypoint(d.Index, ns, name) }}
		case tokenDir != "":
			auth = &caserver.TokenDir{Dir: tokenDir}
		default:
			return nil, fmt.Errorf("folder mode needs --token-dir: the per-node tokens proxies authenticate with")
		}
		return auth, nil
	}
	newPush := func(d Deps) (PushServer, error) {
		a, err := authFor(d)
		if err != nil {
			return nil, err
		}
		push, err = xds.NewServer(xds.Options{
			Generator:     xds.GeneratorFunc(func(p xds.Proxy) map[string]map[string]xds.Resource { return d.Index.For(p) }),
			Authenticator: a,
			Logger:        d.Log.With("component", "xds"),
			Registry:      d.Registry,
			Connected:     func(p xds.Proxy, info xdsclient.NodeInfo) { proxyConnected(d, p, info) },
		})
		if err != nil {
			return nil, err
		}
		return push, nil
	}
	newCA := func(d Deps) (CAService, error) {
		a, err := authFor(d)
		if err != nil {
			return nil, err
		}
		ca, err := caserver.New(caserver.Options{
			CA:            d.CA,
			Authenticator: a,
			Identities:    caserver.NodeIdentitiesFunc(func(node string, id spiffeid.ID) bool { return nodeHasIdentity(d.Index, node, id) }),
			Logger:        d.Log.With("component", "ca"),
		})
		if err != nil {
			return nil, err
		}
		services := []func(*grpc.Server){ca.Register}
		if push != nil {
			services = append(services, push.Register)
		}
		ln, err := caserver.NewListener(caserver.ListenerOptions{Addr: d.GRPCAddr, CA: d.CA, Services: services, Logger: d.Log.With("component", "grpc")})
		if err != nil {
			return nil, err
		}
		return afterSync{d.Store.Synced, ln}, nil
	}
	return newPush, newCA
}

// proxyConnected records what a proxy reported it serves: a ztunnel's node's workloads, and a
// waypoint's Waypoint and the bindings to it, are marked HBONE_H3 only while it says it serves
// HTTP/3 (model.SetNodeTunnelH3, model.SetWaypointTunnelH3).
func proxyConnected(d Deps, p xds.Proxy, info xdsclient.NodeInfo) {
	h3 := info.Serves(xdsclient.TunnelHBONEH3)
	switch p.Kind {
	case model.KindZtunnel:
		if d.Index.SetNodeTunnelH3(p.Node, h3) {
			d.Log.Info("node tunnel protocols changed", "node", p.Node, "tunnel_protocols", info.TunnelProtocols)
			d.Store.Changed()
		}
	case model.KindWaypoint:
		if d.Index.SetWaypointTunnelH3(p.Namespace, p.Name, h3) {
			d.Log.Info("waypoint tunnel protocols changed", "waypoint", p.Namespace+"/"+p.Name, "tunnel_protocols", info.TunnelProtocols)
			d.Store.Changed()
		}
	}
}

// afterSync starts serving only once the sources have loaded their first full state: a
// proxy that connected earlier would be told to drop what it holds and then to add it back.
type afterSync struct {
	synced func() bool
	svc    CAService
}

func (a afterSync) Run(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !a.synced() {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	return a.svc.Run(ctx)
}

// isWaypoint reports whether ns/name is a waypoint the model holds: an ambit-waypoint
// Gateway whose ServiceAccount, of the same name, may then authenticate as itself.
func isWaypoint(idx *model.Index, ns, name string) bool {
	res := idx.For(model.Proxy{ID: "ca", Kind: model.KindZtunnel})
	for _, r := range res[configv1.WaypointTypeURL] {
		if w, ok := r.Message.(*configv1.Waypoint); ok && w.GetNamespace() == ns && w.GetName() == name {
			return true
		}
	}
	return false
}

// nodeHasIdentity reports whether a pod scheduled on node runs as id: the only identities a
// node's ztunnel may obtain certificates for.
func nodeHasIdentity(idx *model.Index, node string, id spiffeid.ID) bool {
	res := idx.For(model.Proxy{ID: "ca", Node: node, Kind: model.KindZtunnel})
	for _, r := range res[configv1.WorkloadTypeURL] {
		w, ok := r.Message.(*configv1.Workload)
		if !ok || w.GetNode() != node {
			continue
		}
		if wid, err := identity.WorkloadIdentity(w, id.TrustDomain()); err == nil && wid == id {
			return true
		}
	}
	// A pod bound to the node that does not run yet: ztunnel captures it at the CNI ADD and
	// fetches its certificate before its first connection.
	ns, sa, ok := namespaceAndSA(id)
	if !ok || id.TrustDomain().Name() != idx.Options().TrustDomain {
		return false
	}
	want, err := identity.WorkloadID(id.TrustDomain(), ns, sa)
	return err == nil && want == id && idx.ScheduledOn(node, ns, sa)
}

// namespaceAndSA splits a workload ID's path, /ns/<namespace>/sa/<service account>.
func namespaceAndSA(id spiffeid.ID) (ns, sa string, ok bool) {
	parts := strings.Split(id.Path(), "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" || parts[2] == "" || parts[4] == "" {
		return "", "", false
	}
	return parts[2], parts[4], true
}
