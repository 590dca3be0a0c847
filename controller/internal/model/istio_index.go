package model

import (
	"maps"
	"slices"
	"strings"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"ambit.dev/controller/internal/istioapi"
)

// istioIndex is the Index's part for Istio's VirtualServices and DestinationRules. Their
// policies (AuthorizationPolicy, PeerAuthentication) become Authorizations and PeerAuths and
// live with ambit's.
type istioIndex struct {
	vs         map[key]*IstioVS
	vsByParent map[string]map[key]struct{} // parent Service resource name → VirtualServices
	dr         map[key]*IstioDR
	// resolveErrs are the errors of VirtualServices whose subsets did not resolve at the
	// last Commit of their parent: "Kind ns/name" → error.
	resolveErrs map[string]error
	// newErrs collects the errors of the Commit in progress; lastErrs those of the last one.
	newErrs, lastErrs []error
}

func newIstioIndex() istioIndex {
	return istioIndex{vs: map[key]*IstioVS{}, vsByParent: map[string]map[key]struct{}{}, dr: map[key]*IstioDR{}, resolveErrs: map[string]error{}}
}

// upsertIstio records one of Istio's objects; handled is false for any other kind.
func (x *Index) upsertIstio(obj runtime.Object) (handled bool, err error) {
	switch o := obj.(type) {
	case *istioapi.VirtualService:
		vs, err := ConvertVirtualService(o, x.opts)
		if err != nil {
			return true, x.setErr(KindIstioVirtualService, o.Namespace, o.Name, err)
		}
		x.setErr(KindIstioVirtualService, o.Namespace, o.Name, nil)
		k := key{o.Namespace, o.Name}
		x.unlinkVS(k)
		x.istio.vs[k] = vs
		for p := range vs.Parents {
			if x.istio.vsByParent[p] == nil {
				x.istio.vsByParent[p] = map[key]struct{}{}
			}
			x.istio.vsByParent[p][k] = struct{}{}
			x.dirtyRoutes[p] = struct{}{}
		}
	case *istioapi.DestinationRule:
		dr, err := ConvertDestinationRule(o, x.opts)
		if err != nil {
			return true, x.setErr(KindIstioDestinationRule, o.Namespace, o.Name, err)
		}
		x.setErr(KindIstioDestinationRule, o.Namespace, o.Name, nil)
		if old := x.istio.dr[key{o.Namespace, o.Name}]; old != nil {
			x.dirtyHost(old.Host)
		}
		x.istio.dr[key{o.Namespace, o.Name}] = dr
		x.dirtyAllIstioRoutes()
		x.dirtyHost(dr.Host)
	case *istioapi.AuthorizationPolicy:
		a, partial, err := convertIstioAuthz(o, x.opts)
		if err != nil {
			return true, x.setErr(KindIstioAuthorizationPolicy, o.Namespace, o.Name, err)
		}
		x.setErr(KindIstioAuthorizationPolicy, o.Namespace, o.Name, nil)
		x.setPartial(errKey(KindIstioAuthorizationPolicy, o.Namespace, o.Name), partial)
		x.putAuthz(key{o.Namespace, a.Name}, a)
	case *istioapi.PeerAuthentication:
		pa, az, err := ConvertIstioPeerAuthentication(o)
		if err != nil {
			return true, x.setErr(KindIstioPeerAuthentication, o.Namespace, o.Name, err)
		}
		x.setErr(KindIstioPeerAuthentication, o.Namespace, o.Name, nil)
		x.peerAuths[key{o.Namespace, pa.Name}] = pa
		x.dirtyScope(o.Namespace)
		x.putAuthz(key{o.Namespace, istioPAPrefix + o.Name}, az)
	default:
		return false, nil
	}
	return true, nil
}

// putAuthz sets (or with a nil a, removes) the Authorization k and marks what it affects.
func (x *Index) putAuthz(k key, a *configv1.Authorization) {
	old := x.authz[k]
	if a == nil {
		if old == nil {
			return
		}
		delete(x.authz, k)
	} else {
		x.authz[k] = a
	}
	x.dirtyAuthz[k] = struct{}{}
	if (a != nil && len(a.Selector) > 0) || (old != nil && len(old.Selector) > 0) {
		x.dirtyScope(k.ns)
	}
}

// dirtyAllIstioRoutes marks every RouteConfig a DestinationRule can change: those of
// VirtualServices (subsets) and of HTTPRoutes (traffic policies).
func (x *Index) dirtyAllIstioRoutes() {
	for p := range x.istio.vsByParent {
		x.dirtyRoutes[p] = struct{}{}
	}
	for p := range x.byParent {
		x.dirtyRoutes[p] = struct{}{}
	}
}

// dirtyHost marks the RouteConfig of the Service with hostname host, if it is one.
func (x *Index) dirtyHost(host string) {
	if p, ok := serviceOfHost(host, x.opts.Domain); ok {
		x.dirtyRoutes[p] = struct{}{}
	}
}

// destinationRuleRouteConfig is the RouteConfig of a Service no route names: one route to
// the Service itself with its DestinationRule's policy, or nil when no rule sets one.
func (x *Index) destinationRuleRouteConfig(svc *corev1.Service) *configv1.RouteConfig {
	host := Hostname(svc.Name, svc.Namespace, x.opts.Domain)
	dr := findDR(x.istio.dr, host)
	if dr == nil || dr.Policy == nil {
		return nil
	}
	// The same for opaque TCP, so that its connections get the pool and outlier detection too.
	return &configv1.RouteConfig{Hostname: host, Namespace: svc.Namespace, Routes: []*configv1.Route{{
		Name:     dr.Namespace + "/" + dr.Name,
		Matches:  []*configv1.RouteMatch{{}},
		Backends: []*configv1.Backend{{Hostname: host, Weight: 1, Policy: dr.Policy}},
	}}, TcpRoutes: []*configv1.Route{{
		Name:     dr.Namespace + "/" + dr.Name + "/tcp",
		Backends: []*configv1.Backend{{Hostname: host, Weight: 1, Policy: dr.Policy}},
	}}}
}

func (x *Index) unlinkVS(k key) {
	if old := x.istio.vs[k]; old != nil {
		for p := range old.Parents {
			delete(x.istio.vsByParent[p], k)
			if len(x.istio.vsByParent[p]) == 0 {
				delete(x.istio.vsByParent, p)
			}
			x.dirtyRoutes[p] = struct{}{}
		}
	}
	delete(x.istio.vs, k)
	delete(x.istio.resolveErrs, errKey(KindIstioVirtualService, k.ns, k.name))
}

func (x *Index) deleteIstio(kind, ns, name string) {
	switch kind {
	case KindIstioVirtualService:
		x.unlinkVS(key{ns, name})
	case KindIstioDestinationRule:
		if old, ok := x.istio.dr[key{ns, name}]; ok {
			delete(x.istio.dr, key{ns, name})
			x.dirtyAllIstioRoutes()
			x.dirtyHost(old.Host)
		}
	case KindIstioAuthorizationPolicy:
		x.putAuthz(key{ns, istioPrefix + name}, nil)
		x.setPartial(errKey(kind, ns, name), nil)
	case KindIstioPeerAuthentication:
		delete(x.peerAuths, key{ns, istioPrefix + name})
		x.dirtyScope(ns)
		x.putAuthz(key{ns, istioPAPrefix + name}, nil)
	}
}

// istioRouteConfig builds the RouteConfig of parent from its VirtualServices. When a subset
// does not resolve it records the error and returns nil: the last good RouteConfig stays.
func (x *Index) istioRouteConfig(parent string, svc *corev1.Service) *configv1.RouteConfig {
	ks := slices.SortedFunc(maps.Keys(x.istio.vsByParent[parent]), func(a, b key) int { return strings.Compare(a.String(), b.String()) })
	vss := make([]*IstioVS, 0, len(ks))
	for _, k := range ks {
		vss = append(vss, x.istio.vs[k])
		delete(x.istio.resolveErrs, errKey(KindIstioVirtualService, k.ns, k.name))
	}
	routes, err := resolveIstioRoutes(vss, parent, x.istio.dr, false)
	var tcp []*configv1.Route
	if err == nil {
		tcp, err = resolveIstioRoutes(vss, parent, x.istio.dr, true)
	}
	if err != nil {
		e := err.(*ObjectError)
		x.istio.resolveErrs[errKey(KindIstioVirtualService, e.Namespace, e.Name)] = err
		x.istio.newErrs = append(x.istio.newErrs, err)
		return nil
	}
	return &configv1.RouteConfig{Hostname: Hostname(svc.Name, svc.Namespace, x.opts.Domain), Namespace: svc.Namespace, Routes: routes, TcpRoutes: tcp}
}

// CommitErrors returns the errors found by the last Commit (a VirtualService subset that no
// DestinationRule defines), which the Store logs; Errors lists them too while they last.
func (x *Index) CommitErrors() []error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.istio.lastErrs)
}
