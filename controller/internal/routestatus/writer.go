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
)

// Writer keeps the status of every HTTPRoute current. Run it on the leader only.
type Writer struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// Domain is the cluster's DNS domain (cluster.local), for the model's conversion.
	Domain string
	Log    *slog.Logger
}

// Run watches HTTPRoutes and Services and writes the routes' status until ctx ends.
func (w *Writer) Run(ctx context.Context) error {
	gf := gatewayinformers.NewSharedInformerFactory(w.Gateway, 0)
	kf := informers.NewSharedInformerFactory(w.Kube, 0)
	routes := gf.Gateway().V1().HTTPRoutes()
	services := kf.Core().V1().Services()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName]())
	defer q.ShutDown()
	enqueue := func(o any) {
		if name, err := cache.DeletionHandlingObjectToName(o); err == nil {
			q.Add(name)
		}
	}
	if _, err := routes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }}); err != nil {
		return err
	}
	// A Service that comes or goes changes ResolvedRefs (or Accepted) of its namespace's routes.
	byNamespace := func(o any) {
		name, err := cache.DeletionHandlingObjectToName(o)
		if err != nil {
			return
		}
		rs, _ := routes.Lister().HTTPRoutes(name.Namespace).List(labels.Everything())
		for _, r := range rs {
			q.Add(cache.ObjectName{Namespace: r.Namespace, Name: r.Name})
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: byNamespace, DeleteFunc: byNamespace}); err != nil {
		return err
	}
	gf.Start(ctx.Done())
	kf.Start(ctx.Done())
	defer gf.Shutdown()
	defer kf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), routes.Informer().HasSynced, services.Informer().HasSynced) {
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
		name, shutdown := q.Get()
		if shutdown {
			return nil
		}
		err := w.write(ctx, routes.Lister().HTTPRoutes(name.Namespace), name.Name, exists)
		switch {
		case err == nil:
			q.Forget(name)
		case ctx.Err() != nil:
		default:
			w.Log.Warn("HTTPRoute status", "route", name.String(), "error", err)
			q.AddRateLimited(name)
		}
		q.Done(name)
	}
}

type routeGetter interface {
	Get(name string) (*gatewayv1.HTTPRoute, error)
}

// write updates the status of one route when what it says changes.
func (w *Writer) write(ctx context.Context, routes routeGetter, name string, exists Lookup) error {
	r, err := routes.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	parents := Parents(r, exists, w.Domain, metav1.NewTime(time.Now().Truncate(time.Second)))
	if Equal(parents, r.Status.Parents) {
		return nil
	}
	r = r.DeepCopy()
	r.Status.Parents = parents
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := w.Gateway.GatewayV1().HTTPRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{FieldManager: "ambit-controller"}); err != nil {
		return fmt.Errorf("update status: %w", err) // a conflict: the informer brings the new version, then again
	}
	return nil
}
