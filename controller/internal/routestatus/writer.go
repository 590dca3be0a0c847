package routestatus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"ambit.dev/controller/internal/source"
)

// Writer keeps the status of every HTTPRoute and GRPCRoute current, and, given Dynamic and
// Verdicts, that of Istio's VirtualServices, DestinationRules, AuthorizationPolicies and
// PeerAuthentications and of ambit's AuthorizationPolicies and PeerAuthentications. Run it
// on the leader only.
type Writer struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// Dynamic reads and writes the policies' status; nil leaves them alone.
	Dynamic dynamic.Interface
	// Verdicts are the model's on the policies (the source.Store); needed with Dynamic.
	Verdicts Verdicts
	// Domain is the cluster's DNS domain (cluster.local), for the model's conversion.
	Domain string
	Log    *slog.Logger
}

// statusKind is how the Writer reads and writes the status of the objects of one kind.
type statusKind struct {
	kind     string
	informer cache.SharedIndexInformer
	// write brings the status of the cached object up to date, when what it says changed.
	write func(ctx context.Context, name cache.ObjectName) error
	// byService: a Service that comes or goes changes the status of the kind's objects of
	// its namespace (a route's parent or backend).
	byService bool
	// byCommit: a commit of the model may change the status of the kind's objects (a
	// policy's verdict); kind is then the model's name of it, as in source.Problem.Object.
	byCommit bool
}

// item is an object to write the status of: its kind's index in the Writer's kinds, its name.
type item struct {
	kind int
	name cache.ObjectName
}

// Run watches HTTPRoutes, GRPCRoutes (when the API server serves them), the policies (with
// Dynamic) and Services, and writes their status until ctx ends.
func (w *Writer) Run(ctx context.Context) error {
	gf := gatewayinformers.NewSharedInformerFactory(w.Gateway, 0)
	kf := informers.NewSharedInformerFactory(w.Kube, 0)
	services := kf.Core().V1().Services()
	exists := func(ns, name string) bool {
		_, err := services.Lister().Services(ns).Get(name)
		return err == nil
	}
	kinds := []statusKind{w.httpRoutes(gf, exists)}
	// A cluster may have Gateway API's HTTPRoute CRD without GRPCRoute's.
	if source.Served(w.Kube.Discovery(), gatewayv1.GroupVersion.String(), "grpcroutes") {
		kinds = append(kinds, w.grpcRoutes(gf, exists))
	}
	var commits <-chan struct{}
	problems := &problemIndex{}
	if w.Dynamic != nil {
		df := dynamicinformer.NewDynamicSharedInformerFactory(w.Dynamic, 0)
		kinds = append(kinds, w.policies(df, problems, exists)...)
		commits = w.Verdicts.SubscribeCommits()
		df.Start(ctx.Done())
		defer df.Shutdown()
	}
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
	s := statusQueue{q: q, kinds: kinds}
	// A Service that comes or goes changes ResolvedRefs (or Accepted) of its namespace's routes.
	byNamespace := func(o any) {
		if name, err := cache.DeletionHandlingObjectToName(o); err == nil {
			s.enqueueAll(name.Namespace, func(k statusKind) bool { return k.byService })
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
	if w.Dynamic != nil {
		problems.refresh(w.Verdicts)
	}
	go func() {
		defer q.ShutDown()
		for {
			select {
			case <-ctx.Done():
				return
			case <-commits: // nil without Dynamic: never
				s.enqueueCommit(problems.refresh(w.Verdicts))
			}
		}
	}()
	return w.work(ctx, s)
}

// statusQueue is the work of one Run: the kinds written and their queue.
type statusQueue struct {
	q     workqueue.TypedRateLimitingInterface[item]
	kinds []statusKind
}

// enqueueAll adds every object of the kinds that want it, of namespace ns ("" for all).
func (s statusQueue) enqueueAll(ns string, want func(statusKind) bool) {
	for i, k := range s.kinds {
		if !want(k) {
			continue
		}
		_ = cache.ListAllByNamespace(k.informer.GetIndexer(), ns, labels.Everything(), func(r any) {
			if n, err := cache.ObjectToName(r); err == nil {
				s.q.Add(item{i, n})
			}
		})
	}
}

// enqueueCommit adds, after a commit of the model, the objects whose verdict or generation
// changed ("Kind ns/name"), or every object of the kinds that follow commits when all is set:
// a commit for a pod that came does not read every policy again.
func (s statusQueue) enqueueCommit(changed []string, all bool) {
	if all {
		s.enqueueAll("", func(k statusKind) bool { return k.byCommit })
		return
	}
	for _, obj := range changed {
		kind, nsName, _ := strings.Cut(obj, " ")
		ns, name, _ := strings.Cut(nsName, "/")
		for i, k := range s.kinds {
			if k.byCommit && k.kind == kind {
				s.q.Add(item{i, cache.ObjectName{Namespace: ns, Name: name}})
			}
		}
	}
}

// work writes the status of each object queued until the queue shuts down.
func (w *Writer) work(ctx context.Context, s statusQueue) error {
	for {
		it, shutdown := s.q.Get()
		if shutdown {
			return nil
		}
		err := s.kinds[it.kind].write(ctx, it.name)
		switch {
		case err == nil:
			s.q.Forget(it)
		case ctx.Err() != nil:
		case apierrors.IsConflict(err):
			// Written from a cache a step behind our own last write: the informer brings
			// that version, and the retry finds nothing to write.
			w.Log.Debug("status conflict", "kind", s.kinds[it.kind].kind, "object", it.name.String())
			s.q.AddRateLimited(it)
		default:
			w.Log.Warn("status", "kind", s.kinds[it.kind].kind, "object", it.name.String(), "error", err)
			s.q.AddRateLimited(it)
		}
		s.q.Done(it)
	}
}

func (w *Writer) httpRoutes(gf gatewayinformers.SharedInformerFactory, exists Lookup) statusKind {
	inf := gf.Gateway().V1().HTTPRoutes()
	return newKind("HTTPRoute", inf.Informer(), func(ns, name string) (*gatewayv1.HTTPRoute, error) { return inf.Lister().HTTPRoutes(ns).Get(name) },
		func(r *gatewayv1.HTTPRoute) Route { return HTTPRoute(r, w.Domain) },
		func(ctx context.Context, r *gatewayv1.HTTPRoute, parents []gatewayv1.RouteParentStatus) error {
			r = r.DeepCopy()
			r.Status.Parents = parents
			_, err := w.Gateway.GatewayV1().HTTPRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{FieldManager: fieldManager})
			return err
		}, exists)
}

func (w *Writer) grpcRoutes(gf gatewayinformers.SharedInformerFactory, exists Lookup) statusKind {
	inf := gf.Gateway().V1().GRPCRoutes()
	return newKind("GRPCRoute", inf.Informer(), func(ns, name string) (*gatewayv1.GRPCRoute, error) { return inf.Lister().GRPCRoutes(ns).Get(name) },
		func(r *gatewayv1.GRPCRoute) Route { return GRPCRoute(r, w.Domain) },
		func(ctx context.Context, r *gatewayv1.GRPCRoute, parents []gatewayv1.RouteParentStatus) error {
			r = r.DeepCopy()
			r.Status.Parents = parents
			_, err := w.Gateway.GatewayV1().GRPCRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{FieldManager: fieldManager})
			return err
		}, exists)
}

// newKind is the statusKind of routes of type T: get reads one from the cache, view is what
// its status depends on, update writes a copy with new status.parents.
func newKind[T any](kind string, inf cache.SharedIndexInformer, get func(ns, name string) (T, error), view func(T) Route,
	update func(context.Context, T, []gatewayv1.RouteParentStatus) error, exists Lookup) statusKind {
	return statusKind{kind: kind, informer: inf, byService: true,
		write: func(ctx context.Context, name cache.ObjectName) error {
			r, err := get(name.Namespace, name.Name)
			if apierrors.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			parents := Parents(view(r), exists, metav1.NewTime(time.Now().Truncate(time.Second)))
			if Equal(parents, view(r).Status) {
				return nil
			}
			return updateStatus(ctx, func(ctx context.Context) error { return update(ctx, r, parents) })
		}}
}

const fieldManager = "ambit-controller"

// updateStatus runs one status update with a timeout; an object gone meanwhile is no error.
func updateStatus(ctx context.Context, update func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := update(ctx); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update status: %w", err) // a conflict: the informer brings the new version, then again
	}
	return nil
}
