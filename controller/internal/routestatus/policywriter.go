package routestatus

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"ambit.dev/controller/internal/istioapi"
	"ambit.dev/controller/internal/source"
)

// Verdicts are the model's verdicts on the objects the sources read: the source.Store.
type Verdicts interface {
	// Problems lists what the model refuses or applies in part, as analyze shows it.
	Problems() []source.Problem
	// SubscribeCommits tells of every commit of the model, which may change Problems.
	SubscribeCommits() <-chan struct{}
	// Synced: the model has read every object once; before, no verdict is final.
	Synced() bool
	// Generations are the generations of the objects the model last read, by object.
	Generations() map[string]int64
}

// problemIndex is the Problems of the last commit by object ("Kind namespace/name"), read
// once per commit rather than once per object, with the generations they are of.
type problemIndex struct {
	mu     sync.Mutex
	synced bool
	m      map[string][]source.Problem
	gens   map[string]int64
}

// refresh reads the verdicts again and returns the objects whose verdict or generation
// changed since the last refresh, or all when the model has just synced (every object's
// verdict is final only now).
func (x *problemIndex) refresh(v Verdicts) (changed []string, all bool) {
	synced := v.Synced()
	gens := v.Generations() // before Problems: those are of these generations or later ones
	m := map[string][]source.Problem{}
	for _, p := range v.Problems() {
		m[p.Object] = append(m[p.Object], p)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	all = synced && !x.synced
	keys := map[string]struct{}{}
	for _, src := range []map[string]int64{gens, x.gens} {
		for k := range src {
			keys[k] = struct{}{}
		}
	}
	for _, src := range []map[string][]source.Problem{m, x.m} {
		for k := range src {
			keys[k] = struct{}{}
		}
	}
	for k := range keys {
		og, ok := x.gens[k]
		g, nok := gens[k]
		if ok != nok || og != g || !slices.Equal(x.m[k], m[k]) {
			changed = append(changed, k)
		}
	}
	x.m, x.gens, x.synced = m, gens, synced
	return changed, all
}

// of returns the problems of object, and false when the model is not synced or has not read
// generation gen of the object yet (the writer's informer ran ahead of the source's): its
// verdict is to come, and refresh will name it.
func (x *problemIndex) of(object string, gen int64) ([]source.Problem, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	g, ok := x.gens[object]
	return x.m[object], x.synced && ok && g == gen
}

// policies are the statusKinds of the Istio kinds the API server serves and of ambit's
// policies.
func (w *Writer) policies(df dynamicinformer.DynamicSharedInformerFactory, problems *problemIndex, exists Lookup) []statusKind {
	var out []statusKind
	istio := source.IstioResources(w.Kube.Discovery())
	for _, kind := range slices.Sorted(maps.Keys(istio)) {
		gvr := istio[kind]
		var missing func(*unstructured.Unstructured) []string
		switch kind {
		case "VirtualService":
			missing = refs(func(vs *istioapi.VirtualService) []string { return VirtualServiceMissing(vs, w.Domain, exists) })
		case "DestinationRule":
			missing = refs(func(dr *istioapi.DestinationRule) []string { return DestinationRuleMissing(dr, w.Domain, exists) })
		}
		// The model names Istio's kinds with their group, apart from ambit's of the same name.
		out = append(out, w.policyKind(df, gvr, kind+"."+gvr.Group, problems, missing))
	}
	return append(out,
		w.policyKind(df, source.AuthorizationPolicyGVR, "AuthorizationPolicy", problems, nil),
		w.policyKind(df, source.PeerAuthenticationGVR, "PeerAuthentication", problems, nil))
}

// refs reads an object as a T for missing; one that does not read has no references to
// check (it is refused at decode, and Accepted says why).
func refs[T any](missing func(*T) []string) func(*unstructured.Unstructured) []string {
	return func(u *unstructured.Unstructured) []string {
		o := new(T)
		if runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, o) != nil {
			return nil
		}
		return missing(o)
	}
}

// policyKind is the statusKind of one policy kind, read and written as unstructured objects
// so that whatever else their status holds (Istio's validationMessages, other controllers'
// conditions) stays as it is. missing, for a kind with references, lists those that do not
// resolve.
func (w *Writer) policyKind(df dynamicinformer.DynamicSharedInformerFactory, gvr schema.GroupVersionResource, kind string,
	problems *problemIndex, missing func(*unstructured.Unstructured) []string) statusKind {
	inf := df.ForResource(gvr).Informer()
	return statusKind{kind: kind, informer: inf, byCommit: true, byService: missing != nil,
		write: func(ctx context.Context, name cache.ObjectName) error {
			o, ok, err := inf.GetIndexer().GetByKey(name.String())
			if err != nil || !ok {
				return err
			}
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				return nil
			}
			probs, current := problems.of(kind+" "+name.String(), u.GetGeneration())
			if !current {
				return nil // the commit after the model reads it enqueues it again
			}
			ours, others, observed := readStatus(u)
			p := Policy{Generation: u.GetGeneration(), Conditions: ours, Problems: probs, HasRefs: missing != nil}
			if missing != nil {
				p.Missing = missing(u)
			}
			conds := PolicyConditions(p, metav1.NewTime(time.Now().Truncate(time.Second)))
			if ConditionsEqual(conds, ours) && observed == u.GetGeneration() {
				return nil
			}
			u = u.DeepCopy()
			status, _ := u.Object["status"].(map[string]any)
			if status == nil {
				status = map[string]any{}
			}
			list := others
			for i := range conds {
				m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&conds[i])
				if err != nil {
					return err
				}
				list = append(list, m)
			}
			status["conditions"] = list
			status["observedGeneration"] = u.GetGeneration()
			u.Object["status"] = status
			return updateStatus(ctx, func(ctx context.Context) error {
				_, err := w.Dynamic.Resource(gvr).Namespace(name.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: fieldManager})
				return err
			})
		}}
}

// readStatus splits u's status.conditions into ambit's (Accepted, ResolvedRefs), in their
// order, and the others, as they are; observed is status.observedGeneration. The status is
// read as Istio's (istioapi.IstioStatus), a superset of ambit's policies' status.
func readStatus(u *unstructured.Unstructured) (ours []metav1.Condition, others []any, observed int64) {
	raw, _ := u.Object["status"].(map[string]any)
	if raw == nil {
		return nil, nil, 0
	}
	var st istioapi.IstioStatus
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &st); err != nil {
		return nil, nil, 0 // unreadable: written anew
	}
	for _, c := range st.Conditions {
		if c.Type != Accepted && c.Type != ResolvedRefs {
			continue
		}
		mc := metav1.Condition{Type: c.Type, Status: metav1.ConditionStatus(c.Status), Reason: c.Reason, Message: c.Message,
			ObservedGeneration: int64(c.ObservedGeneration)}
		if c.LastTransitionTime != nil {
			mc.LastTransitionTime = *c.LastTransitionTime
		}
		ours = append(ours, mc)
	}
	list, _ := raw["conditions"].([]any)
	for _, c := range list {
		if m, ok := c.(map[string]any); ok && (m["type"] == Accepted || m["type"] == ResolvedRefs) {
			continue
		}
		others = append(others, c)
	}
	return ours, others, int64(st.ObservedGeneration)
}
