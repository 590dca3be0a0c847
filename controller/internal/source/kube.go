package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	"ambit.dev/controller/internal/istioapi"
)

// The resources of ambit's CRDs, watched through the dynamic client.
var (
	AuthorizationPolicyGVR = secv1.GroupVersion.WithResource("authorizationpolicies")
	PeerAuthenticationGVR  = secv1.GroupVersion.WithResource("peerauthentications")
)

// KubeClients are the API clients the Kube source uses (fakes in unit tests).
type KubeClients struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	Dynamic dynamic.Interface
}

// Kube watches Namespaces, Pods, Services, ServiceAccounts, Gateways, HTTPRoutes, GRPCRoutes and ambit's
// CRDs with shared informers and feeds them to a Store.
type Kube struct {
	clients KubeClients
	store   *Store
	log     *slog.Logger
	resync  time.Duration
}

// NewKube returns a Kube source. resync 0 disables periodic resyncs.
func NewKube(c KubeClients, store *Store, log *slog.Logger, resync time.Duration) *Kube {
	return &Kube{clients: c, store: store, log: log, resync: resync}
}

// Run starts the informers, marks the store synced once every cache has synced, and
// returns when ctx ends.
func (k *Kube) Run(ctx context.Context) error {
	kf := informers.NewSharedInformerFactory(k.clients.Kube, k.resync)
	gf := gatewayinformers.NewSharedInformerFactory(k.clients.Gateway, k.resync)
	df := dynamicinformer.NewDynamicSharedInformerFactory(k.clients.Dynamic, k.resync)

	typed := []cache.SharedIndexInformer{
		kf.Core().V1().Namespaces().Informer(),
		kf.Core().V1().Pods().Informer(),
		kf.Core().V1().Services().Informer(),
		kf.Core().V1().ServiceAccounts().Informer(),
		gf.Gateway().V1().Gateways().Informer(),
		gf.Gateway().V1().HTTPRoutes().Informer(),
	}
	// GRPCRoute only when the API server serves it: an informer of a kind it does not serve
	// never syncs, and the controller would never be ready.
	if k.served("gateway.networking.k8s.io/v1", "grpcroutes") {
		typed = append(typed, gf.Gateway().V1().GRPCRoutes().Informer())
	} else {
		k.log.Info("GRPCRoute not served by the API server, not watched")
	}
	var synced []cache.InformerSynced
	for _, inf := range typed {
		// Managed fields are never read and are a large part of every object's memory.
		if err := inf.SetTransform(dropManagedFields); err != nil {
			return fmt.Errorf("kube source: set transform: %w", err)
		}
		if _, err := inf.AddEventHandler(k.handler(func(o any) (runtime.Object, error) {
			r, ok := o.(runtime.Object)
			if !ok {
				return nil, fmt.Errorf("unexpected %T", o)
			}
			return r, nil
		}, false)); err != nil {
			return fmt.Errorf("kube source: add handler: %w", err)
		}
		synced = append(synced, inf.HasSynced)
	}
	for gvr, conv := range map[schema.GroupVersionResource]func(*unstructured.Unstructured) (runtime.Object, error){
		AuthorizationPolicyGVR: func(u *unstructured.Unstructured) (runtime.Object, error) {
			return fromUnstructured(u, &secv1.AuthorizationPolicy{})
		},
		PeerAuthenticationGVR: func(u *unstructured.Unstructured) (runtime.Object, error) {
			return fromUnstructured(u, &secv1.PeerAuthentication{})
		},
	} {
		if err := k.watchDynamic(df, gvr, conv, &synced); err != nil {
			return err
		}
	}
	// Istio's own kinds, when their CRDs are installed: one served version of each (the API
	// server converts between versions, which share one schema).
	for kind, gvr := range k.istioResources() {
		conv := func(u *unstructured.Unstructured) (runtime.Object, error) {
			return fromUnstructured(u, istioapi.New(kind))
		}
		if err := k.watchDynamic(df, gvr, conv, &synced); err != nil {
			return err
		}
	}

	kf.Start(ctx.Done())

	gf.Start(ctx.Done())
	df.Start(ctx.Done())
	defer func() {
		kf.Shutdown()
		gf.Shutdown()
		df.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kube source: caches did not sync")
	}
	k.log.Info("kubernetes caches synced")
	k.store.MarkSynced()
	<-ctx.Done()
	return nil
}

func (k *Kube) watchDynamic(df dynamicinformer.DynamicSharedInformerFactory, gvr schema.GroupVersionResource,
	conv func(*unstructured.Unstructured) (runtime.Object, error), synced *[]cache.InformerSynced) error {
	inf := df.ForResource(gvr).Informer()
	if _, err := inf.AddEventHandler(k.handler(func(o any) (runtime.Object, error) {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			return nil, fmt.Errorf("unexpected %T", o)
		}
		return conv(u)
	}, true)); err != nil {
		return fmt.Errorf("kube source: add handler: %w", err)
	}
	*synced = append(*synced, inf.HasSynced)
	return nil
}

// istioResources finds, by discovery, the Istio kinds the API server serves and the newest
// version of each. A cluster without Istio's CRDs serves none, and watching them would never
// sync; such a kind is skipped (logged), so a CRD installed later needs a controller restart.
// served reports whether the API server serves resource in groupVersion.
func (k *Kube) served(groupVersion, resource string) bool {
	return Served(k.clients.Kube.Discovery(), groupVersion, resource)
}

// Served reports whether the API server d asks serves resource in groupVersion (a cluster
// may have one Gateway API CRD without another, or no Istio).
func Served(d discovery.ServerResourcesInterface, groupVersion, resource string) bool {
	list, err := d.ServerResourcesForGroupVersion(groupVersion)
	if err != nil || list == nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == resource {
			return true
		}
	}
	return false
}

func (k *Kube) istioResources() map[string]schema.GroupVersionResource {
	out := IstioResources(k.clients.Kube.Discovery())
	for kind := range istioapi.Resources {
		if _, ok := out[kind]; !ok {
			k.log.Info("Istio kind not served by the API server, not watched", "kind", kind, "group", istioapi.GroupOf(kind))
		}
	}
	return out
}

// IstioResources finds, by discovery, the Istio kinds the API server d asks serves and the
// newest version of each, by kind.
func IstioResources(d discovery.ServerResourcesInterface) map[string]schema.GroupVersionResource {
	out := map[string]schema.GroupVersionResource{}
	served := map[string]bool{} // "<group>/<version> <resource>"
	for _, g := range []string{istioapi.NetworkingGroup, istioapi.SecurityGroup} {
		vs := istioapi.NetworkingVersions
		if g == istioapi.SecurityGroup {
			vs = istioapi.SecurityVersions
		}
		for _, v := range vs {
			list, err := d.ServerResourcesForGroupVersion(g + "/" + v)
			if err != nil || list == nil {
				continue
			}
			for _, r := range list.APIResources {
				served[g+"/"+v+" "+r.Name] = true
			}
		}
	}
	for kind, res := range istioapi.Resources {
		g := istioapi.GroupOf(kind)
		for _, v := range istioapi.VersionsOf(kind) {
			if served[g+"/"+v+" "+res] {
				out[kind] = schema.GroupVersionResource{Group: g, Version: v, Resource: res}
				break
			}
		}
	}
	return out
}

// fromUnstructured converts strictly: an unknown field is an error that names it. The status
// is left out: the model never reads it, and what other controllers (Istio's) write there is
// no reason to refuse an object.
func fromUnstructured[T runtime.Object](u *unstructured.Unstructured, out T) (runtime.Object, error) {
	obj := u.Object
	if _, ok := obj["status"]; ok {
		obj = make(map[string]any, len(u.Object))
		for k, v := range u.Object {
			if k != "status" {
				obj[k] = v
			}
		}
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(obj, out, true); err != nil {
		kind := u.GetKind()
		if gk := u.GroupVersionKind().GroupKind(); strings.HasSuffix(gk.Group, ".istio.io") {
			kind = gk.String() // apart from ambit's kinds of the same name
		}
		return nil, fmt.Errorf("%s %s/%s: %w", kind, u.GetNamespace(), u.GetName(), err)
	}
	return out, nil
}

func dropManagedFields(o any) (any, error) {
	if m, err := meta.Accessor(o); err == nil {
		m.SetManagedFields(nil)
		if a := m.GetAnnotations(); a != nil {
			delete(a, corev1.LastAppliedConfigAnnotation)
		}
	}
	return o, nil
}

// handler feeds the store; generations, for the kinds the status writer writes (Istio's and
// ambit's policies), records the generation the model read of each object.
func (k *Kube) handler(conv func(any) (runtime.Object, error), generations bool) cache.ResourceEventHandler {
	apply := func(o any, del bool) {
		if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o = t.Obj
		}
		key := "?"
		if ro, ok := o.(runtime.Object); ok {
			key = objectName(ro)
		}
		gen := int64(-1)
		if m, err := meta.Accessor(o); err == nil && !del {
			gen = m.GetGeneration()
		}
		seen := func() {
			if generations {
				k.store.seen(key, gen) // after the verdict: Generations never runs ahead of Problems
			}
		}
		obj, err := conv(o)
		if err != nil && del {
			obj, err = metaOnly(o) // a deleted object need not be valid to be forgotten
		}
		if err != nil {
			k.store.Refused(key, err)
			seen()
			return
		}
		k.store.Decoded(key)
		if del {
			k.store.Delete(obj)
		} else {
			k.store.Upsert(obj)
		}
		seen()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { apply(o, false) },
		UpdateFunc: func(_, o any) { apply(o, false) },
		DeleteFunc: func(o any) { apply(o, true) },
	}
}

func metaOnly(o any) (runtime.Object, error) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected %T", o)
	}
	var out runtime.Object
	if strings.HasSuffix(u.GroupVersionKind().Group, ".istio.io") {
		out = istioapi.New(u.GetKind())
	}
	switch {
	case out != nil:
	case u.GetKind() == "AuthorizationPolicy":
		out = &secv1.AuthorizationPolicy{}
	case u.GetKind() == "PeerAuthentication":
		out = &secv1.PeerAuthentication{}
	default:
		return nil, fmt.Errorf("unexpected kind %q", u.GetKind())
	}
	m, _ := meta.Accessor(out)
	m.SetNamespace(u.GetNamespace())
	m.SetName(u.GetName())
	return out, nil
}
