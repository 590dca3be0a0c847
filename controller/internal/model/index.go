package model

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	"ambit.dev/controller/internal/istioapi"
)

// Proxy kinds.
const (
	KindZtunnel  = "ztunnel"
	KindWaypoint = "waypoint"
)

// Proxy is a connected proxy, as For needs to know it.
type Proxy struct {
	ID, Node string
	Kind     string // "ztunnel" | "waypoint"
	// Namespace and Name of the waypoint's Gateway (waypoints only).
	Namespace, Name string
}

// Resource is one resource and its version: a hash of its deterministic encoding, so two
// equal resources have equal versions across controller restarts.
type Resource struct {
	Version string
	Message proto.Message
}

// Resources is type URL → resource name → resource. Maps returned by Index are shared
// snapshots: callers must not modify them or the messages in them.
type Resources map[string]map[string]Resource

// Change names one resource that Commit added, changed or removed.
type Change struct {
	TypeURL, Name string
	Removed       bool
}

type key struct{ ns, name string }

func (k key) String() string { return k.ns + "/" + k.name }

type routeObj struct {
	attached []AttachedRoutes
	// kind and name are the route's (its key's name has the kind in it for a GRPCRoute);
	// refs its references to backends.
	kind, name string
	refs       []ServiceRef
}

// Index holds the current objects and the resources computed from them. Upsert and Delete
// record an object and mark what it can affect; Commit recomputes only that and publishes new
// snapshots, which For reads. It is safe for concurrent use.
type Index struct {
	opts Options

	mu sync.RWMutex

	namespaces  map[string]*corev1.Namespace
	pods        map[string]map[string]*corev1.Pod     // ns → name
	services    map[string]map[string]*corev1.Service // ns → name
	sas         map[key]*corev1.ServiceAccount
	waypoints   map[string]map[string]*configv1.Waypoint // ns → name
	routes      map[key]routeObj
	byParent    map[string]map[key]struct{} // parent Service resource name → HTTPRoutes
	authz       map[key]*configv1.Authorization
	peerAuths   map[key]PeerAuth
	errs        map[string]error   // "Kind ns/name" → error
	partial     map[string][]error // "Kind ns/name" → what it leaves unapplied (ObjectError.Partial)
	istio       istioIndex         // Istio's VirtualServices and DestinationRules (istio_index.go)
	h3Nodes     map[string]bool    // nodes whose ztunnel serves HBONE over HTTP/3 (tunnel.go)
	h3Waypoints map[key]bool       // waypoints that serve HBONE over HTTP/3 (tunnel.go)

	dirtyPods      map[key]struct{}
	dirtyNS        map[string]struct{} // every workload and Service of the namespace
	dirtyAll       bool
	dirtyServices  map[key]struct{}
	dirtyRoutes    map[string]struct{}
	dirtyAuthz     map[key]struct{}
	dirtyWaypoints map[key]struct{}

	res    Resources                                // published snapshots, copy on write
	byNode map[string]map[string]*configv1.Workload // node → uid → workload
	wlNode map[string]string                        // uid → node
	gen    uint64
}

// NewIndex returns an empty Index.
func NewIndex(opts Options) *Index {
	x := &Index{
		opts:        opts.WithDefaults(),
		namespaces:  map[string]*corev1.Namespace{},
		pods:        map[string]map[string]*corev1.Pod{},
		services:    map[string]map[string]*corev1.Service{},
		sas:         map[key]*corev1.ServiceAccount{},
		waypoints:   map[string]map[string]*configv1.Waypoint{},
		routes:      map[key]routeObj{},
		byParent:    map[string]map[key]struct{}{},
		authz:       map[key]*configv1.Authorization{},
		peerAuths:   map[key]PeerAuth{},
		istio:       newIstioIndex(),
		errs:        map[string]error{},
		partial:     map[string][]error{},
		h3Nodes:     map[string]bool{},
		h3Waypoints: map[key]bool{},
		res:         Resources{},
		byNode:      map[string]map[string]*configv1.Workload{},
		wlNode:      map[string]string{},
	}
	for _, t := range configv1.TypeURLs {
		x.res[t] = map[string]Resource{}
	}
	x.resetDirty()
	return x
}

// Build returns an Index of objs, committed, and the errors of the objects it left out.
func Build(opts Options, objs []runtime.Object) (*Index, []error) {
	x := NewIndex(opts)
	var errs []error
	for _, o := range objs {
		if err := x.Upsert(o); err != nil {
			errs = append(errs, err)
		}
	}
	x.Commit()
	return x, errs
}

func (x *Index) resetDirty() {
	x.dirtyPods = map[key]struct{}{}
	x.dirtyNS = map[string]struct{}{}
	x.dirtyAll = false
	x.dirtyServices = map[key]struct{}{}
	x.dirtyRoutes = map[string]struct{}{}
	x.dirtyAuthz = map[key]struct{}{}
	x.dirtyWaypoints = map[key]struct{}{}
}

// Options returns the options the index was made with, defaults applied.
func (x *Index) Options() Options { return x.opts }

// ErrUnsupported is returned by Upsert and Delete for an object of a kind the model ignores.
var ErrUnsupported = errors.New("unsupported object kind")

func errKey(kind, ns, name string) string { return kind + " " + ns + "/" + name }

func (x *Index) setErr(kind, ns, name string, err error) error {
	k := errKey(kind, ns, name)
	if err == nil {
		delete(x.errs, k)
		return nil
	}
	x.errs[k] = err
	return err
}

// Upsert records obj, a new or changed object. An invalid object is refused with an
// *ObjectError and its last good version stays in force.
func (x *Index) Upsert(obj runtime.Object) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	switch o := obj.(type) {
	case *corev1.Namespace:
		old := x.namespaces[o.Name]
		x.namespaces[o.Name] = o
		if old == nil || old.Labels[LabelDataplaneMode] != o.Labels[LabelDataplaneMode] || old.Labels[LabelUseWaypoint] != o.Labels[LabelUseWaypoint] ||
			old.Labels[LabelTunnelProtocol] != o.Labels[LabelTunnelProtocol] ||
			old.Labels[LabelIstioDataplaneMode] != o.Labels[LabelIstioDataplaneMode] || old.Labels[LabelIstioUseWaypoint] != o.Labels[LabelIstioUseWaypoint] {
			x.dirtyNS[o.Name] = struct{}{}
		}
		if old == nil || old.Labels[LabelTunnelProtocol] != o.Labels[LabelTunnelProtocol] {
			for name := range x.waypoints[o.Name] { // their tunnel protocol
				x.dirtyWaypoints[key{o.Name, name}] = struct{}{}
			}
		}
	case *corev1.Pod:
		for i, ip := range o.Status.PodIPs {
			if _, err := parseIP(ip.IP); err != nil {
				return x.setErr("Pod", o.Namespace, o.Name, objErr("Pod", o.Namespace, o.Name, fmt.Sprintf("status.podIPs[%d].ip", i), "%w", err))
			}
		}
		x.setErr("Pod", o.Namespace, o.Name, nil)
		put2(x.pods, o.Namespace, o.Name, o)
		x.dirtyPods[key{o.Namespace, o.Name}] = struct{}{}
	case *corev1.Service:
		if _, err := ConvertService(o, x.opts.Domain); err != nil {
			return x.setErr("Service", o.Namespace, o.Name, err)
		}
		x.setErr("Service", o.Namespace, o.Name, nil)
		old := x.services[o.Namespace][o.Name]
		put2(x.services, o.Namespace, o.Name, o)
		k := key{o.Namespace, o.Name}
		x.dirtyServices[k] = struct{}{}
		x.dirtyRoutes[ServiceName(o.Name, o.Namespace, x.opts.Domain)] = struct{}{}
		if old == nil || !maps.Equal(old.Spec.Selector, o.Spec.Selector) || !portsEqual(old.Spec.Ports, o.Spec.Ports) {
			x.dirtyNS[o.Namespace] = struct{}{}
		}
	case *corev1.ServiceAccount:
		k := key{o.Namespace, o.Name}
		old := x.sas[k]
		x.sas[k] = o
		nw, _ := useWaypointLabel(o.Labels)
		ow := ""
		if old != nil {
			ow, _ = useWaypointLabel(old.Labels)
		}
		if (old == nil && nw != "") || (old != nil && ow != nw) {
			x.dirtyNS[o.Namespace] = struct{}{}
		}
	case *gatewayv1.Gateway:
		wp, ok, err := ConvertGateway(o, x.opts.TrustDomain)
		if err != nil {
			return x.setErr("Gateway", o.Namespace, o.Name, err)
		}
		x.setErr("Gateway", o.Namespace, o.Name, nil)
		if !ok {
			return x.deleteLocked("Gateway", o.Namespace, o.Name)
		}
		put2(x.waypoints, o.Namespace, o.Name, wp)
		x.dirtyWaypoints[key{o.Namespace, o.Name}] = struct{}{}
		x.dirtyNS[o.Namespace] = struct{}{}
	case *gatewayv1.HTTPRoute:
		att, err := ConvertHTTPRoute(o, x.opts.Domain)
		if err != nil {
			return x.setErr("HTTPRoute", o.Namespace, o.Name, err)
		}
		x.setErr("HTTPRoute", o.Namespace, o.Name, nil)
		x.linkRoute(key{o.Namespace, o.Name}, routeObj{attached: att, kind: "HTTPRoute", name: o.Name, refs: HTTPRouteRefs(o)})
	case *gatewayv1.GRPCRoute:
		att, err := ConvertGRPCRoute(o, x.opts.Domain)
		if err != nil {
			return x.setErr("GRPCRoute", o.Namespace, o.Name, err)
		}
		x.setErr("GRPCRoute", o.Namespace, o.Name, nil)
		x.linkRoute(grpcRouteKey(o.Namespace, o.Name), routeObj{attached: att, kind: "GRPCRoute", name: o.Name, refs: GRPCRouteRefs(o)})
	case *secv1.AuthorizationPolicy:
		a, err := ConvertAuthorizationPolicy(o, x.opts.RootNamespace)
		if err != nil {
			return x.setErr("AuthorizationPolicy", o.Namespace, o.Name, err)
		}
		x.setErr("AuthorizationPolicy", o.Namespace, o.Name, nil)
		k := key{o.Namespace, o.Name}
		old := x.authz[k]
		x.authz[k] = a
		x.dirtyAuthz[k] = struct{}{}
		if len(a.Selector) > 0 || (old != nil && len(old.Selector) > 0) {
			x.dirtyScope(o.Namespace)
		}
	case *secv1.PeerAuthentication:
		mode, err := PeerAuthMode(o)
		if err != nil {
			return x.setErr("PeerAuthentication", o.Namespace, o.Name, err)
		}
		x.setErr("PeerAuthentication", o.Namespace, o.Name, nil)
		pa := PeerAuth{Namespace: o.Namespace, Name: o.Name, Mode: mode, Created: o.CreationTimestamp.Time}
		if o.Spec.Selector != nil {
			pa.Selector = maps2(o.Spec.Selector.MatchLabels)
		}
		x.peerAuths[key{o.Namespace, o.Name}] = pa
		x.dirtyScope(o.Namespace)
	default:
		if handled, err := x.upsertIstio(obj); handled {
			return err
		}
		return fmt.Errorf("upsert %T: %w", obj, ErrUnsupported)
	}
	return nil
}

// dirtyScope marks the workloads a policy in ns can affect: its namespace's, or all of them
// for the root namespace.
func (x *Index) dirtyScope(ns string) {
	if ns == x.opts.RootNamespace {
		x.dirtyAll = true
		return
	}
	x.dirtyNS[ns] = struct{}{}
}

func portsEqual(a, b []corev1.ServicePort) bool {
	return slices.EqualFunc(a, b, func(p, q corev1.ServicePort) bool {
		return p.Name == q.Name && p.Port == q.Port && p.TargetPort == q.TargetPort && p.Protocol == q.Protocol &&
			(p.AppProtocol == nil) == (q.AppProtocol == nil) && (p.AppProtocol == nil || *p.AppProtocol == *q.AppProtocol)
	})
}

func put2[V any](m map[string]map[string]V, a, b string, v V) {
	if m[a] == nil {
		m[a] = map[string]V{}
	}
	m[a][b] = v
}

// grpcRouteKey is a GRPCRoute's key among the routes, apart from an HTTPRoute of the same name.
func grpcRouteKey(ns, name string) key { return key{ns, "GRPCRoute/" + name} }

// linkRoute records route k, what it attaches to its parents in place of what it attached
// before.
func (x *Index) linkRoute(k key, r routeObj) {
	x.unlinkRoute(k)
	x.routes[k] = r
	for _, a := range r.attached {
		if x.byParent[a.Parent] == nil {
			x.byParent[a.Parent] = map[key]struct{}{}
		}
		x.byParent[a.Parent][k] = struct{}{}
		x.dirtyRoutes[a.Parent] = struct{}{}
	}
}

func (x *Index) unlinkRoute(k key) {
	for _, a := range x.routes[k].attached {
		delete(x.byParent[a.Parent], k)
		if len(x.byParent[a.Parent]) == 0 {
			delete(x.byParent, a.Parent)
		}
		x.dirtyRoutes[a.Parent] = struct{}{}
	}
	delete(x.routes, k)
}

// Delete removes obj (only its kind, namespace and name are read).
func (x *Index) Delete(obj runtime.Object) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var kind string
	switch obj.(type) {
	case *corev1.Namespace:
		kind = "Namespace"
	case *corev1.Pod:
		kind = "Pod"
	case *corev1.Service:
		kind = "Service"
	case *corev1.ServiceAccount:
		kind = "ServiceAccount"
	case *gatewayv1.Gateway:
		kind = "Gateway"
	case *gatewayv1.HTTPRoute:
		kind = "HTTPRoute"
	case *gatewayv1.GRPCRoute:
		kind = "GRPCRoute"
	case *secv1.AuthorizationPolicy:
		kind = "AuthorizationPolicy"
	case *secv1.PeerAuthentication:
		kind = "PeerAuthentication"
	case *istioapi.VirtualService:
		kind = KindIstioVirtualService
	case *istioapi.DestinationRule:
		kind = KindIstioDestinationRule
	case *istioapi.AuthorizationPolicy:
		kind = KindIstioAuthorizationPolicy
	case *istioapi.PeerAuthentication:
		kind = KindIstioPeerAuthentication
	default:
		return fmt.Errorf("delete %T: %w", obj, ErrUnsupported)
	}
	m, ok := obj.(interface {
		GetNamespace() string
		GetName() string
	})
	if !ok {
		return fmt.Errorf("delete %T: %w", obj, ErrUnsupported)
	}
	x.setErr(kind, m.GetNamespace(), m.GetName(), nil)
	return x.deleteLocked(kind, m.GetNamespace(), m.GetName())
}

func (x *Index) deleteLocked(kind, ns, name string) error {
	k := key{ns, name}
	switch kind {
	case "Namespace":
		delete(x.namespaces, name)
		x.dirtyNS[name] = struct{}{}
	case "Pod":
		delete(x.pods[ns], name)
		x.dirtyPods[k] = struct{}{}
	case "Service":
		delete(x.services[ns], name)
		x.dirtyServices[k] = struct{}{}
		x.dirtyRoutes[ServiceName(name, ns, x.opts.Domain)] = struct{}{}
		x.dirtyNS[ns] = struct{}{}
	case "ServiceAccount":
		if old := x.sas[k]; old != nil && (old.Labels[LabelUseWaypoint] != "" || old.Labels[LabelIstioUseWaypoint] != "") {
			x.dirtyNS[ns] = struct{}{}
		}
		delete(x.sas, k)
	case "Gateway":
		if _, ok := x.waypoints[ns][name]; ok {
			delete(x.waypoints[ns], name)
			x.dirtyWaypoints[k] = struct{}{}
			x.dirtyNS[ns] = struct{}{}
		}
	case "HTTPRoute":
		x.unlinkRoute(k)
	case "GRPCRoute":
		x.unlinkRoute(grpcRouteKey(ns, name))
	case "AuthorizationPolicy":
		if old := x.authz[k]; old != nil {
			if len(old.Selector) > 0 {
				x.dirtyScope(ns)
			}
			delete(x.authz, k)
			x.dirtyAuthz[k] = struct{}{}
		}
	case "PeerAuthentication":
		delete(x.peerAuths, k)
		x.dirtyScope(ns)
	default:
		x.deleteIstio(kind, ns, name)
	}
	return nil
}

// Errors returns the current validation errors, one per invalid object, sorted.
func (x *Index) Errors() []error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	all := maps.Clone(x.errs)
	maps.Copy(all, x.istio.resolveErrs)
	ks := slices.Sorted(maps.Keys(all))
	out := make([]error, 0, len(ks))
	for _, k := range ks {
		out = append(out, all[k])
	}
	return out
}

// Partial lists what objects in force leave unapplied (*ObjectError with Partial set): the
// rules of Istio AuthorizationPolicies that fail closed, and the references of HTTPRoutes and
// GRPCRoutes to Services that do not exist (what ResolvedRefs says in Kubernetes).
func (x *Index) Partial() []error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []error
	for _, k := range slices.Sorted(maps.Keys(x.partial)) {
		out = append(out, x.partial[k]...)
	}
	return append(out, x.unresolvedRefs()...)
}

// setPartial records the parts of object k left unapplied, in place of the last.
func (x *Index) setPartial(k string, errs []error) {
	if len(errs) == 0 {
		delete(x.partial, k)
		return
	}
	x.partial[k] = errs
}

// Generation counts the commits that changed some resource.
func (x *Index) Generation() uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.gen
}

// Version returns the hash of a resource's deterministic encoding.
func Version(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err)) // our own generated messages always marshal
	}
	h := fnv.New64a()
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// writer applies resource changes to copies of the published maps.
type writer struct {
	x       *Index
	copied  map[string]bool
	changes []Change
}

func (w *writer) put(typeURL, name string, m proto.Message) {
	cur := w.x.res[typeURL]
	if m == nil {
		if _, ok := cur[name]; !ok {
			return
		}
		w.own(typeURL)
		delete(w.x.res[typeURL], name)
		w.changes = append(w.changes, Change{TypeURL: typeURL, Name: name, Removed: true})
		return
	}
	v := Version(m)
	if old, ok := cur[name]; ok && old.Version == v {
		return
	}
	w.own(typeURL)
	w.x.res[typeURL][name] = Resource{Version: v, Message: m}
	w.changes = append(w.changes, Change{TypeURL: typeURL, Name: name})
}

func (w *writer) own(typeURL string) {
	if !w.copied[typeURL] {
		w.x.res[typeURL] = maps.Clone(w.x.res[typeURL])
		w.copied[typeURL] = true
	}
}

// Commit recomputes the resources that the Upserts and Deletes since the last Commit can
// affect, publishes them and returns what changed.
func (x *Index) Commit() []Change {
	x.mu.Lock()
	defer x.mu.Unlock()
	w := &writer{x: x, copied: map[string]bool{}}

	if x.dirtyAll {
		for ns := range x.pods {
			x.dirtyNS[ns] = struct{}{}
		}
		for ns := range x.services {
			x.dirtyNS[ns] = struct{}{}
		}
	}
	// Waypoints first: workloads and Services copy their addresses and tunnel protocols.
	for k := range x.dirtyWaypoints {
		wp := x.waypoints[k.ns][k.name]
		if wp == nil {
			w.put(configv1.WaypointTypeURL, k.String(), nil)
			continue
		}
		if tp := x.waypointTunnel(k); wp.TunnelProtocol != tp {
			// A new message: the published one is shared with readers.
			wp = proto.CloneOf(wp)
			wp.TunnelProtocol = tp
			x.waypoints[k.ns][k.name] = wp
			x.dirtyNS[k.ns] = struct{}{}
		}
		w.put(configv1.WaypointTypeURL, k.String(), wp)
	}
	for ns := range x.dirtyNS {
		for name := range x.services[ns] {
			x.dirtyServices[key{ns, name}] = struct{}{}
		}
		for name := range x.pods[ns] {
			x.dirtyPods[key{ns, name}] = struct{}{}
		}
	}
	for k := range x.dirtyServices {
		svc := x.services[k.ns][k.name]
		name := ServiceName(k.name, k.ns, x.opts.Domain)
		if svc == nil {
			w.put(configv1.ServiceTypeURL, name, nil)
			continue
		}
		s, err := ConvertService(svc, x.opts.Domain)
		if err != nil { // validated in Upsert
			continue
		}
		s.Waypoint = ServiceWaypoint(svc, x.namespaces[k.ns], x.waypoints[k.ns], x.opts.TrustDomain)
		w.put(configv1.ServiceTypeURL, name, s)
	}
	inputs := map[string]*WorkloadInputs{}
	for k := range x.dirtyPods {
		uid := WorkloadUID(x.opts.Cluster, k.ns, k.name)
		var wl *configv1.Workload
		if pod := x.pods[k.ns][k.name]; pod != nil {
			in := inputs[k.ns]
			if in == nil {
				in = x.inputs(k.ns)
				inputs[k.ns] = in
			}
			in.ServiceAccount = x.sas[key{k.ns, cmpOr(pod.Spec.ServiceAccountName, "default")}]
			pin := *in
			pin.Services = in.selectorIndex.candidates(pod.Labels)
			var err error
			if wl, err = BuildWorkload(pod, pin); err != nil {
				x.errs[errKey("Pod", k.ns, k.name)] = err
				continue
			}
		}
		if old, ok := x.wlNode[uid]; ok && (wl == nil || wl.Node != old) {
			delete(x.byNode[old], uid)
			if len(x.byNode[old]) == 0 {
				delete(x.byNode, old)
			}
			delete(x.wlNode, uid)
		}
		if wl == nil {
			w.put(configv1.WorkloadTypeURL, uid, nil)
			continue
		}
		if x.byNode[wl.Node] == nil {
			x.byNode[wl.Node] = map[string]*configv1.Workload{}
		}
		x.byNode[wl.Node][uid] = wl
		x.wlNode[uid] = wl.Node
		w.put(configv1.WorkloadTypeURL, uid, wl)
	}
	for k := range x.dirtyAuthz {
		if a := x.authz[k]; a != nil {
			w.put(configv1.AuthorizationTypeURL, k.String(), a)
		} else {
			w.put(configv1.AuthorizationTypeURL, k.String(), nil)
		}
	}
	for parent := range x.dirtyRoutes {
		ns, host, _ := cut(parent)
		svcName, _, _ := strings.Cut(host, ".")
		svc := x.services[ns][svcName]
		if svc != nil && len(x.istio.vsByParent[parent]) > 0 {
			// Istio's VirtualServices win over HTTPRoutes for the same host.
			if rc := x.istioRouteConfig(parent, svc); rc != nil {
				w.put(configv1.RouteConfigTypeURL, parent, applyDestinationRules(rc, x.istio.dr))
			}
			continue
		}
		if svc == nil {
			w.put(configv1.RouteConfigTypeURL, parent, nil)
			continue
		}
		if len(x.byParent[parent]) == 0 {
			// No route, but maybe a DestinationRule's policy for the Service itself.
			if rc := x.destinationRuleRouteConfig(svc); rc != nil {
				w.put(configv1.RouteConfigTypeURL, parent, rc)
			} else {
				w.put(configv1.RouteConfigTypeURL, parent, nil) // not a typed nil
			}
			continue
		}
		rks := slices.SortedFunc(maps.Keys(x.byParent[parent]), func(a, b key) int {
			return compareStrings(a.String(), b.String())
		})
		var att []AttachedRoutes
		for _, rk := range rks {
			for _, a := range x.routes[rk].attached {
				if a.Parent == parent {
					att = append(att, a)
				}
			}
		}
		w.put(configv1.RouteConfigTypeURL, parent, applyDestinationRules(BuildRouteConfig(Hostname(svc.Name, svc.Namespace, x.opts.Domain), svc.Namespace, att), x.istio.dr))
	}
	x.istio.lastErrs, x.istio.newErrs = x.istio.newErrs, nil
	x.resetDirty()
	if len(w.changes) > 0 {
		x.gen++
	}
	sort.Slice(w.changes, func(i, j int) bool {
		if w.changes[i].TypeURL != w.changes[j].TypeURL {
			return w.changes[i].TypeURL < w.changes[j].TypeURL
		}
		return w.changes[i].Name < w.changes[j].Name
	})
	return w.changes
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func cut(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func (x *Index) inputs(ns string) *WorkloadInputs {
	in := &WorkloadInputs{
		Options:   x.opts,
		Namespace: x.namespaces[ns],
		Waypoints: x.waypoints[ns],
		H3Nodes:   x.h3Nodes,
	}
	in.selectorIndex = selectorIndex{}
	for _, s := range x.services[ns] {
		in.Services = append(in.Services, s)
		in.selectorIndex.add(s)
	}
	for k, a := range x.authz {
		if (k.ns == ns || k.ns == x.opts.RootNamespace) && len(a.Selector) > 0 {
			in.Policies = append(in.Policies, a)
		}
	}
	for k, p := range x.peerAuths {
		if k.ns == ns || k.ns == x.opts.RootNamespace {
			in.PeerAuths = append(in.PeerAuths, p)
		}
	}
	return in
}

// For returns what proxy p should hold, as of the last Commit. A ztunnel gets every
// Workload, Service and Waypoint, and only the Authorizations that apply to some workload on
// its node; a waypoint gets every Workload, Service and Waypoint, the Authorizations that
// target it (targetRefs to its Gateway, or to a Service bound to it) and the RouteConfigs of
// the Services bound to it or whose endpoints are. The inner maps of the shared types are shared snapshots.
func (x *Index) For(p Proxy) Resources {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := Resources{
		configv1.WorkloadTypeURL: x.res[configv1.WorkloadTypeURL],
		configv1.ServiceTypeURL:  x.res[configv1.ServiceTypeURL],
		configv1.WaypointTypeURL: x.res[configv1.WaypointTypeURL],
	}
	authz := map[string]Resource{}
	out[configv1.AuthorizationTypeURL] = authz
	switch p.Kind {
	case KindZtunnel:
		wls := x.byNode[p.Node]
		nss := map[string]bool{}
		named := map[string]bool{}
		for _, wl := range wls {
			nss[wl.Namespace] = true
			for _, n := range wl.AuthorizationPolicies {
				named[n] = true
			}
		}
		for name, r := range x.res[configv1.AuthorizationTypeURL] {
			a := r.Message.(*configv1.Authorization)
			switch a.Scope {
			case configv1.Authorization_GLOBAL:
				if len(wls) > 0 {
					authz[name] = r
				}
			case configv1.Authorization_NAMESPACE:
				if nss[a.Namespace] {
					authz[name] = r
				}
			default:
				if named[name] {
					authz[name] = r
				}
			}
		}
	case KindWaypoint:
		id := "spiffe://" + x.opts.TrustDomain + "/ns/" + p.Namespace + "/sa/" + p.Name
		if wp := x.waypoints[p.Namespace][p.Name]; wp != nil {
			id = wp.Identity
		}
		routes := map[string]Resource{}
		out[configv1.RouteConfigTypeURL] = routes
		bound := map[string]bool{} // "<ns>/<service name>"
		for name, r := range x.res[configv1.ServiceTypeURL] {
			s := r.Message.(*configv1.Service)
			if s.Waypoint.GetIdentity() != id {
				continue
			}
			bound[s.Namespace+"/"+s.Name] = true
			if rc, ok := x.res[configv1.RouteConfigTypeURL][name]; ok {
				routes[name] = rc
			}
		}
		// A service-account (or namespace) waypoint takes the Services whose endpoints are
		// bound to it: ztunnel hands it their traffic addressed to the VIP, and it routes by
		// their RouteConfigs.
		for _, r := range x.res[configv1.WorkloadTypeURL] {
			w := r.Message.(*configv1.Workload)
			if w.Waypoint.GetIdentity() != id {
				continue
			}
			for svc := range w.Services {
				if rc, ok := x.res[configv1.RouteConfigTypeURL][svc]; ok {
					routes[svc] = rc
				}
			}
		}
		for name, r := range x.res[configv1.AuthorizationTypeURL] {
			a := r.Message.(*configv1.Authorization)
			for _, t := range a.TargetRefs {
				if (t.Kind == "Gateway" && a.Namespace == p.Namespace && t.Name == p.Name) ||
					(t.Kind == "Service" && bound[a.Namespace+"/"+t.Name]) {
					authz[name] = r
					break
				}
			}
		}
	}
	return out
}

// selectorIndex finds the Services whose selector may match a pod without trying them all:
// each Service is filed under one label of its selector (the smallest key), and a pod's
// candidates are the Services filed under one of its labels. BuildWorkload still checks
// the whole selector.
type selectorIndex map[string][]*corev1.Service

func (si selectorIndex) add(s *corev1.Service) {
	if len(s.Spec.Selector) == 0 {
		return
	}
	k := ""
	for l := range s.Spec.Selector {
		if k == "" || l < k {
			k = l
		}
	}
	kv := k + "=" + s.Spec.Selector[k]
	si[kv] = append(si[kv], s)
}

func (si selectorIndex) candidates(labels map[string]string) []*corev1.Service {
	var out []*corev1.Service
	for k, v := range labels {
		out = append(out, si[k+"="+v]...)
	}
	return out
}
