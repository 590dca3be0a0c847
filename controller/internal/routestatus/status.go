// Package routestatus writes the status of HTTPRoutes and GRPCRoutes in Kubernetes, as
// Gateway API asks of a mesh implementation (GAMMA): for every parentRef to a Service, an
// entry of status.parents under ambit's controller name with two conditions, Accepted (the
// route is valid and its parent exists; else why not, naming the field) and ResolvedRefs
// (every backendRef and mirror is a Service that exists; else which is not). A refused route changes nothing
// else: the model keeps its last good version (docs/traffic.md). The leader writes; other
// controllers' entries of the same route are kept.
//
// It writes the status of Istio's VirtualServices, DestinationRules, AuthorizationPolicies
// and PeerAuthentications and of ambit's policies too, in Istio's status shape
// (status.conditions, status.observedGeneration): Accepted (in force, in force in part, or
// refused, naming the field) and, for the kinds with references, ResolvedRefs. Their verdicts
// are the model's, as `ambitctl analyze` lists them (source.Store.Problems), rather than
// computed again here: subsets resolve against every DestinationRule at the model's commit.
// One loop (Writer.Run) serves every kind.
package routestatus

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"ambit.dev/controller/internal/model"
)

// ControllerName is how ambit signs its entries of status.parents.
const ControllerName gatewayv1.GatewayController = "ambit.dev/mesh-controller"

// Condition types and reasons (Gateway API's).
const (
	Accepted     = string(gatewayv1.RouteConditionAccepted)
	ResolvedRefs = string(gatewayv1.RouteConditionResolvedRefs)
)

// Lookup answers whether a Service exists.
type Lookup func(namespace, name string) bool

// Route is what the status of a route depends on, alike for HTTPRoutes and GRPCRoutes.
type Route struct {
	Namespace  string
	Generation int64
	ParentRefs []gatewayv1.ParentReference
	// Status is the route's status.parents as it is.
	Status []gatewayv1.RouteParentStatus
	// Refs are the route's references to Services: backendRefs and mirrors.
	Refs []Ref
	// Err is the model's verdict on the route: nil, or why it is refused.
	Err error
}

// Ref is a reference to a backend and the field path that holds it.
type Ref = model.ServiceRef

// HTTPRoute is what r's status depends on.
func HTTPRoute(r *gatewayv1.HTTPRoute, domain string) Route {
	_, err := model.ConvertHTTPRoute(r, domain)
	return Route{Namespace: r.Namespace, Generation: r.Generation, ParentRefs: r.Spec.ParentRefs, Status: r.Status.Parents,
		Refs: model.HTTPRouteRefs(r), Err: err}
}

// GRPCRoute is what r's status depends on.
func GRPCRoute(r *gatewayv1.GRPCRoute, domain string) Route {
	_, err := model.ConvertGRPCRoute(r, domain)
	return Route{Namespace: r.Namespace, Generation: r.Generation, ParentRefs: r.Spec.ParentRefs, Status: r.Status.Parents,
		Refs: model.GRPCRouteRefs(r), Err: err}
}

// Parents is r's status.parents as ambit writes it: the entries of other controllers as they
// are, then one entry of ambit's per parentRef to a Service. A condition whose status stays
// keeps its lastTransitionTime.
func Parents(r Route, services Lookup, now metav1.Time) []gatewayv1.RouteParentStatus {
	var out []gatewayv1.RouteParentStatus
	old := map[string]gatewayv1.RouteParentStatus{}
	for _, p := range r.Status {
		if p.ControllerName != ControllerName {
			out = append(out, p)
			continue
		}
		old[parentKey(p.ParentRef, r.Namespace)] = p
	}
	resolved := resolvedRefs(r, services)
	for _, ref := range r.ParentRefs {
		if !isService(ref.Group, ref.Kind) {
			continue // a Gateway's, another implementation's business
		}
		accepted := metav1.Condition{Type: Accepted, Status: metav1.ConditionTrue, Reason: string(gatewayv1.RouteReasonAccepted),
			Message: "the mesh routes this Service's traffic by the route"}
		switch ns := ns(ref.Namespace, r.Namespace); {
		case r.Err != nil:
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.RouteReasonUnsupportedValue), r.Err.Error()
		case !services(ns, string(ref.Name)):
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.RouteReasonNoMatchingParent),
				fmt.Sprintf("parent Service %s/%s does not exist", ns, ref.Name)
		}
		conds := stamp([]metav1.Condition{accepted, resolved}, old[parentKey(ref, r.Namespace)].Conditions, r.Generation, now)
		out = append(out, gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: ControllerName, Conditions: conds})
	}
	return out
}

// resolvedRefs is the ResolvedRefs condition: every backendRef and mirror of every rule is a
// Service of the route's namespace that exists.
func resolvedRefs(r Route, services Lookup) metav1.Condition {
	c := metav1.Condition{Type: ResolvedRefs, Status: metav1.ConditionTrue, Reason: string(gatewayv1.RouteReasonResolvedRefs),
		Message: "every backendRef is a Service that exists"}
	var missing []string
	for _, b := range r.Refs {
		switch ns := ns(b.Namespace, r.Namespace); {
		case !isBackendService(b.Group, b.Kind):
			return metav1.Condition{Type: ResolvedRefs, Status: metav1.ConditionFalse, Reason: string(gatewayv1.RouteReasonInvalidKind),
				Message: fmt.Sprintf("%s: kind %s is not a Service", b.Field, kindOf(b.Group, b.Kind))}
		case ns != r.Namespace:
			return metav1.Condition{Type: ResolvedRefs, Status: metav1.ConditionFalse, Reason: string(gatewayv1.RouteReasonRefNotPermitted),
				Message: fmt.Sprintf("%s: Service %s/%s is in another namespace (ReferenceGrant is not supported)", b.Field, ns, b.Name)}
		case !services(ns, string(b.Name)):
			missing = append(missing, fmt.Sprintf("%s: Service %s/%s", b.Field, ns, b.Name))
		}
	}
	if len(missing) > 0 {
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, string(gatewayv1.RouteReasonBackendNotFound),
			"not found: "+strings.Join(missing, "; ")
	}
	return c
}

// Equal reports whether two status.parents say the same, times aside.
func Equal(a, b []gatewayv1.RouteParentStatus) bool {
	return slices.EqualFunc(a, b, func(x, y gatewayv1.RouteParentStatus) bool {
		return x.ControllerName == y.ControllerName && parentKey(x.ParentRef, "") == parentKey(y.ParentRef, "") &&
			ConditionsEqual(x.Conditions, y.Conditions)
	})
}

// ConditionsEqual reports whether two lists of conditions say the same, times aside.
func ConditionsEqual(a, b []metav1.Condition) bool {
	return slices.EqualFunc(a, b, func(c, d metav1.Condition) bool {
		return c.Type == d.Type && c.Status == d.Status && c.Reason == d.Reason && c.Message == d.Message &&
			c.ObservedGeneration == d.ObservedGeneration
	})
}

// stamp sets the observed generation of conds, and their lastTransitionTime: that of the
// condition of the same type in prev while the status is the same (metav1.Condition's
// meaning: the time of the last flip), else now.
func stamp(conds, prev []metav1.Condition, gen int64, now metav1.Time) []metav1.Condition {
	for i := range conds {
		conds[i].ObservedGeneration = gen
		conds[i].LastTransitionTime = now
		if c := findCondition(prev, conds[i].Type); c != nil && c.Status == conds[i].Status && !c.LastTransitionTime.IsZero() {
			conds[i].LastTransitionTime = c.LastTransitionTime
		}
	}
	return conds
}

func findCondition(cs []metav1.Condition, typ string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == typ {
			return &cs[i]
		}
	}
	return nil
}

func parentKey(p gatewayv1.ParentReference, routeNS string) string {
	port := ""
	if p.Port != nil {
		port = fmt.Sprint(*p.Port)
	}
	section := ""
	if p.SectionName != nil {
		section = string(*p.SectionName)
	}
	return kindOf(p.Group, p.Kind) + "/" + ns(p.Namespace, routeNS) + "/" + string(p.Name) + ":" + port + "#" + section
}

// isService: a parentRef to a Service (a parentRef's kind defaults to Gateway).
func isService(g *gatewayv1.Group, k *gatewayv1.Kind) bool {
	return (g == nil || *g == "" || *g == "core") && k != nil && *k == "Service"
}

// isBackendService: a backendRef to a Service (a backendRef's kind defaults to Service).
func isBackendService(g *gatewayv1.Group, k *gatewayv1.Kind) bool {
	return (g == nil || *g == "" || *g == "core") && (k == nil || *k == "Service")
}

func kindOf(g *gatewayv1.Group, k *gatewayv1.Kind) string {
	kind := "Gateway" // the default of a parentRef; a backendRef's default is Service
	if k != nil {
		kind = string(*k)
	}
	if g != nil && *g != "" {
		return kind + "." + string(*g)
	}
	return kind
}

func ns(n *gatewayv1.Namespace, def string) string {
	if n != nil && *n != "" {
		return string(*n)
	}
	return def
}
