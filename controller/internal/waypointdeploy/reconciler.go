package waypointdeploy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	kptr "k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"ambit.dev/controller/internal/model"
)

// Options configure a Reconciler.
type Options struct {
	Settings
	// Dynamic applies, reads and deletes the waypoints' objects. Required.
	Dynamic dynamic.Interface
	// Gateway watches Gateways and writes their status. Required.
	Gateway gatewayclient.Interface
	// Logger; default discards.
	Logger *slog.Logger
}

// Reconciler keeps, for every Gateway of class ambit-waypoint, the waypoint's objects as the
// template renders them, and the Gateway's status. Run it on the leader only: it is the
// one writer of those objects.
type Reconciler struct {
	opts     Options
	log      *slog.Logger
	gateways gatewaylisters.GatewayLister
	children map[schema.GroupVersionResource]cache.GenericLister
}

// New validates opts and returns a Reconciler.
func New(opts Options) (*Reconciler, error) {
	if err := opts.Settings.validate(); err != nil {
		return nil, err
	}
	if opts.Dynamic == nil || opts.Gateway == nil {
		return nil, errors.New("waypoint reconciler: no clients")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{opts: opts, log: opts.Logger}, nil
}

// Run watches Gateways, and the objects labelled with the class ambit-waypoint, and
// reconciles each Gateway they concern until ctx ends. It fails only when the caches do not
// sync; a failed reconcile is logged and retried with backoff.
func (r *Reconciler) Run(ctx context.Context) error {
	gf := gatewayinformers.NewSharedInformerFactory(r.opts.Gateway, 0)
	df := dynamicinformer.NewFilteredDynamicSharedInformerFactory(r.opts.Dynamic, 0, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.LabelSelector = LabelGatewayClass + "=" + model.WaypointClass
	})
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName]())
	defer queue.ShutDown()

	gwInf := gf.Gateway().V1().Gateways()
	r.gateways = gwInf.Lister()
	if _, err := gwInf.Informer().AddEventHandler(enqueue(queue, func(o metav1.Object) (string, bool) { return o.GetName(), true })); err != nil {
		return fmt.Errorf("waypoint reconciler: %w", err)
	}
	synced := []cache.InformerSynced{gwInf.Informer().HasSynced}
	r.children = map[schema.GroupVersionResource]cache.GenericLister{}
	for _, gvr := range []schema.GroupVersionResource{ServiceAccountGVR, DeploymentGVR, ServiceGVR} {
		inf := df.ForResource(gvr)
		// An object's change concerns the Gateway that controls it.
		if _, err := inf.Informer().AddEventHandler(enqueue(queue, func(o metav1.Object) (string, bool) {
			ref := metav1.GetControllerOfNoCopy(o)
			if ref == nil || !controlledBy(o, ref.Name) {
				return "", false
			}
			return ref.Name, true
		})); err != nil {
			return fmt.Errorf("waypoint reconciler: %w", err)
		}
		r.children[gvr] = inf.Lister()
		synced = append(synced, inf.Informer().HasSynced)
	}
	gf.Start(ctx.Done())
	df.Start(ctx.Done())
	defer func() {
		gf.Shutdown()
		df.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("waypoint reconciler: caches did not sync")
	}
	r.log.Info("waypoint reconciler started")
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		key, quit := queue.Get()
		if quit {
			return nil
		}
		err := r.reconcile(ctx, key)
		switch {
		case err == nil:
			queue.Forget(key)
		case ctx.Err() == nil:
			r.log.Warn("waypoint reconcile failed; retrying", "gateway", key.String(), "error", err)
			queue.AddRateLimited(key)
		}
		queue.Done(key)
	}
}

// enqueue adds to q the Gateway an object concerns: the one named by gateway, in the
// object's namespace.
func enqueue(q workqueue.TypedInterface[types.NamespacedName], gateway func(metav1.Object) (string, bool)) cache.ResourceEventHandler {
	add := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		o, ok := obj.(metav1.Object)
		if !ok {
			return
		}
		if name, ok := gateway(o); ok {
			q.Add(types.NamespacedName{Namespace: o.GetNamespace(), Name: name})
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, o any) { add(o) }, DeleteFunc: add}
}

// reconcile brings one Gateway's waypoint objects and status to what they should be.
func (r *Reconciler) reconcile(ctx context.Context, key types.NamespacedName) error {
	gw, err := r.gateways.Gateways(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		gw, err = nil, nil
	}
	if err != nil {
		return err
	}
	if gw == nil || string(gw.Spec.GatewayClassName) != model.WaypointClass || gw.DeletionTimestamp != nil {
		return r.cleanup(ctx, key)
	}
	objs, err := Desired(gw, r.opts.Settings)
	if err != nil {
		return r.writeStatus(ctx, gw, outcome{invalid: err})
	}
	// Nothing is applied unless every object is free or already the Gateway's.
	all := objs.All()
	live := make([]*unstructured.Unstructured, len(all))
	for i, o := range all {
		if live[i], err = r.live(ctx, o); err != nil {
			return err
		}
		if live[i] != nil && !controlledBy(live[i], gw.Name) {
			conflict := fmt.Errorf("%s %s/%s exists and is not this Gateway's (it has no controller ownerReference to it); delete or rename it",
				o.GetKind(), o.GetNamespace(), o.GetName())
			return r.writeStatus(ctx, gw, outcome{conflict: conflict})
		}
	}
	for i, o := range all {
		if live[i] != nil && live[i].GetAnnotations()[AnnotationAppliedHash] == o.GetAnnotations()[AnnotationAppliedHash] {
			continue
		}
		applied, err := r.opts.Dynamic.Resource(GVR(o)).Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o,
			metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
			// The API refuses what the template rendered: retrying cannot help.
			err = fmt.Errorf("%s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			return r.writeStatus(ctx, gw, outcome{invalid: err})
		}
		if err != nil {
			return fmt.Errorf("apply %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
		r.log.Info("waypoint object applied", "gateway", key.String(), "kind", o.GetKind(), "name", o.GetName(), "created", live[i] == nil)
		live[i] = applied
	}
	return r.writeStatus(ctx, gw, outcome{deployment: live[1], service: live[2]})
}

// live returns the object of o's kind and name as it is, or nil. The cache holds only the
// objects labelled with the class: one missing from it is asked of the API server, so that
// an object of the same name that someone else made is never taken over.
func (r *Reconciler) live(ctx context.Context, o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvr := GVR(o)
	obj, err := r.children[gvr].ByNamespace(o.GetNamespace()).Get(o.GetName())
	if err == nil {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			return u, nil
		}
		return nil, fmt.Errorf("%s %s/%s: unexpected %T in cache", o.GetKind(), o.GetNamespace(), o.GetName(), obj)
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	u, err := r.opts.Dynamic.Resource(gvr).Namespace(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
	}
	return u, nil
}

// cleanup deletes the objects of a Gateway that is gone, being deleted or no longer of class
// ambit-waypoint. Their ownerReferences would have the garbage collector do it too; doing it
// here does not depend on one running, and is the same for a class change, which the
// collector does not see.
func (r *Reconciler) cleanup(ctx context.Context, key types.NamespacedName) error {
	sel := labels.SelectorFromSet(labels.Set{LabelGatewayName: key.Name})
	for _, gvr := range []schema.GroupVersionResource{DeploymentGVR, ServiceGVR, ServiceAccountGVR} {
		objs, err := r.children[gvr].ByNamespace(key.Namespace).List(sel)
		if err != nil {
			return err
		}
		for _, obj := range objs {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok || !controlledBy(u, key.Name) {
				continue
			}
			uid := u.GetUID()
			err := r.opts.Dynamic.Resource(gvr).Namespace(key.Namespace).Delete(ctx, u.GetName(), metav1.DeleteOptions{
				Preconditions:     &metav1.Preconditions{UID: &uid},
				PropagationPolicy: kptr.To(metav1.DeletePropagationBackground),
			})
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				continue // already gone, or another object of the name since
			}
			if err != nil {
				return fmt.Errorf("delete %s %s/%s: %w", u.GetKind(), key.Namespace, u.GetName(), err)
			}
			r.log.Info("waypoint object deleted", "gateway", key.String(), "kind", u.GetKind(), "name", u.GetName())
		}
	}
	return nil
}

// writeStatus server-side applies the Gateway's conditions and addresses unless it already
// says them. A Gateway refused is logged then, once per change of what is wrong.
func (r *Reconciler) writeStatus(ctx context.Context, gw *gatewayv1.Gateway, o outcome) error {
	conds, addrs := gatewayStatus(gw, o, metav1.Now())
	if statusUpToDate(gw, conds, addrs) {
		return nil
	}
	if err := cmp.Or(o.invalid, o.conflict); err != nil {
		r.log.Warn("waypoint not deployed", "gateway", gw.Namespace+"/"+gw.Name, "error", err)
	}
	st := gatewayapply.GatewayStatus()
	for _, c := range conds {
		st.WithConditions(metav1apply.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
			WithMessage(c.Message).WithObservedGeneration(c.ObservedGeneration).WithLastTransitionTime(c.LastTransitionTime))
	}
	for _, a := range addrs {
		st.WithAddresses(gatewayapply.GatewayStatusAddress().WithType(addressType(a.Type)).WithValue(a.Value))
	}
	_, err := r.opts.Gateway.GatewayV1().Gateways(gw.Namespace).ApplyStatus(ctx,
		gatewayapply.Gateway(gw.Name, gw.Namespace).WithStatus(st), metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("gateway %s/%s status: %w", gw.Namespace, gw.Name, err)
	}
	return nil
}
