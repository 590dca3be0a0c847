package routestatus

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"ambit.dev/controller/internal/source"
)

// Writer keeps the status of every HTTPRoute and GRPCRoute current. Run it on the leader
// only.
type Writer struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// Domain is the cluster's DNS domain (cluster.local), for the model's conversion.
	Domain string
	Log    *slog.Logger
}

// routeKind is how the Writer reads and writes the routes of one kind.
type routeKind struct {
	kind     string
	informer cache.SharedIndexInformer
	// view reads a route from the informer's cache.
	view func(ns, name string) (Route, error)
	// update writes parents as the status.parents of the cached route ns/name.
	update func(ctx context.Context, ns, name string, parents []gatewayv1.RouteParentStatus) error
}

// item is a route to write the status of: its kind's index in the Writer's kinds, its name.
type item struct {
	kind int
	name cache.ObjectName
}

// Run watches HTTPRoutes, GRPCRoutes (when the API server serves them) and Services, and
// writes the routes' status until ctx ends.
func (w *Writer) Run(ctx context.Context) error {
	gf := gatewayinformers.NewSharedInformerFactory(w.Gateway, 0)
	kf := informers.NewSharedInformerFactory(w.Kube, 0)
	kinds := []routeKind{w.httpRoutes(gf)}
	// A cluster may have Gateway API's HTTPRoute CRD without GRPCRoute's.
	if source.Served(w.Kube.Discovery(), gatewayv1.GroupVersion.String(), "grpcroutes") {
		kinds = append(kinds, w.grpcRoutes(gf))
	}
	services := kf.Core().V1().Services()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[item]())
	defer q.ShutDown()
	synced := []cache.InformerSynced{services.Informer().HasSynced}
	for i, k := range kinds {
		enqueue := func(o any) {
			if name, err := cache.DeletionHandlingObjectToName(o); err == nil {
				q.Add(item{i, name})
			}
		}
		if _, err := k.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }}); err != nil {
			return err
		}
		synced = append(synced, k.informer.HasSynced)
	}
	// A Service that comes or goes changes ResolvedRefs (or Accepted) of its namespace's routes.
	byNamespace := func(o any) {
		name, err := cache.DeletionHandlingObjectToName(o)
		if err != nil {
			return
		}
		for i, k := range kinds {
			_ = cache.ListAllByNamespace(k.informer.GetIndexer(), name.Namespace, labels.Everything(), func(r any) {
				if n, err := cache.ObjectToName(r); err == nil {
					q.Add(item{i, n})
				}
			})
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: byNamespace, DeleteFunc: byNamespace}); err != nil {
		return err
	}
	gf.Start(ctx.Done())
	kf.Start(ctx.Done())
	defer gf.Shutdown()
	defer kf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	exists := func(ns, name string) bool {
		_, err := services.Lister().Services(ns).Get(name)
		return err == nil
	}
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	for {
		it, shutdown := q.Get()
		if shutdown {
			return nil
		}
		err := w.write(ctx, kinds[it.kind], it.name, exists)
		switch {
		case err == nil:
			q.Forget(it)
		case ctx.Err() != nil:
		default:
			w.Log.Warn("route status", "kind", kinds[it.kind].kind, "route", it.name.String(), "error", err)
			q.AddRateLimited(it)
		}
		q.Done(it)
	}
}

func (w *Writer) httpRoutes(gf gatewayinformers.SharedInformerFactory) routeKind {
	inf := gf.Gateway().V1().HTTPRoutes()
	return newKind("HTTPRoute", inf.Informer(), func(ns, name string) (*gatewayv1.HTTPRoute, error) { return inf.Lister().HTTPRoutes(ns).Get(name) },
		func(r *gatewayv1.HTTPRoute) Route { return HTTPRoute(r, w.Domain) },
		func(ctx context.Context, r *gatewayv1.HTTPRoute, parents []gatewayv1.RouteParentStatus) error {
			r = r.DeepCopy()
			r.Status.Parents = parents
			_, err := w.Gateway.GatewayV1().HTTPRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{FieldManager: fieldManager})
			return err
		})
}

func (w *Writer) grpcRoutes(gf gatewayinformers.SharedInformerFactory) routeKind {
	inf := gf.Gateway().V1().GRPCRoutes()
	return newKind("GRPCRoute", inf.Informer(), func(ns, name string) (*gatewayv1.GRPCRoute, error) { return inf.Lister().GRPCRoutes(ns).Get(name) },
		func(r *gatewayv1.GRPCRoute) Route { return GRPCRoute(r, w.Domain) },
		func(ctx context.Context, r *gatewayv1.GRPCRoute, parents []gatewayv1.RouteParentStatus) error {
			r = r.DeepCopy()
			r.Status.Parents = parents
			_, err := w.Gateway.GatewayV1().GRPCRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{FieldManager: fieldManager})
			return err
		})
}

// newKind is the routeKind of routes of type T: get reads one from the cache, view is what
// its status depends on, update writes a copy with new status.parents.
func newKind[T any](kind string, inf cache.SharedIndexInformer, get func(ns, name string) (T, error), view func(T) Route,
	update func(context.Context, T, []gatewayv1.RouteParentStatus) error) routeKind {
	return routeKind{kind: kind, informer: inf,
		view: func(ns, name string) (Route, error) {
			r, err := get(ns, name)
			if err != nil {
				return Route{}, err
			}
			return view(r), nil
		},
		update: func(ctx context.Context, ns, name string, parents []gatewayv1.RouteParentStatus) error {
			r, err := get(ns, name)
			if err != nil {
				return err
			}
			return update(ctx, r, parents)
		}}
}

const fieldManager = "ambit-controller"

// write updates the status of one route when what it says changes.
func (w *Writer) write(ctx context.Context, k routeKind, name cache.ObjectName, exists Lookup) error {
	r, err := k.view(name.Namespace, name.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	parents := Parents(r, exists, metav1.NewTime(time.Now().Truncate(time.Second)))
	if Equal(parents, r.Status) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := k.update(ctx, name.Namespace, name.Name, parents); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update status: %w", err) // a conflict: the informer brings the new version, then again
	}
	return nil
}
