package routestatus

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"ambit.dev/controller/internal/istioapi"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/source"
)

// The reasons of the policies' conditions (Istio's kinds and ambit's policies).
const (
	ReasonAccepted = "Accepted"
	// ReasonInvalid: the object is refused (its last good version stays in force).
	ReasonInvalid = "Invalid"
	// ReasonPartiallyInvalid: the object is in force but for the fields the message names
	// (an Istio AuthorizationPolicy's rule that fails closed).
	ReasonPartiallyInvalid = "PartiallyInvalid"
	// ReasonUnresolvedRefs: the object is valid but a reference it needs (a subset) does not
	// resolve, so its last good version stays in force.
	ReasonUnresolvedRefs = "UnresolvedRefs"
	ReasonResolvedRefs   = "ResolvedRefs"
	// ReasonRefNotFound: a subset no DestinationRule defines.
	ReasonRefNotFound = "RefNotFound"
	// ReasonBackendNotFound: a host that names a Service of the cluster that does not exist.
	ReasonBackendNotFound = "BackendNotFound"
)

// Policy is what the status of an Istio resource or one of ambit's policies depends on.
type Policy struct {
	Generation int64
	// Conditions are ambit's conditions in the object's status as they are.
	Conditions []metav1.Condition
	// Problems are the model's on the object (source.Store.Problems, which analyze lists).
	Problems []source.Problem
	// HasRefs: the kind refers to other objects and gets a ResolvedRefs condition.
	HasRefs bool
	// Missing are its references to Services that do not exist, "field: Service ns/name".
	Missing []string
}

// PolicyConditions are the Accepted and (with HasRefs) ResolvedRefs conditions of p. A
// condition keeps its lastTransitionTime unless its status flips.
func PolicyConditions(p Policy, now metav1.Time) []metav1.Condition {
	var invalid, partial, unresolved []string
	for _, pr := range p.Problems {
		msg := pr.Error
		if pr.Field != "" {
			msg = pr.Field + ": " + pr.Error
		}
		switch {
		case pr.Unresolved:
			unresolved = append(unresolved, msg)
		case pr.Partial:
			partial = append(partial, msg)
		default:
			invalid = append(invalid, msg)
		}
	}
	accepted := metav1.Condition{Type: Accepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "in force"}
	switch {
	case len(invalid) > 0:
		accepted.Status, accepted.Reason = metav1.ConditionFalse, ReasonInvalid
		accepted.Message = "refused, its last good version stays in force: " + strings.Join(invalid, "; ")
	case len(unresolved) > 0:
		accepted.Status, accepted.Reason = metav1.ConditionFalse, ReasonUnresolvedRefs
		accepted.Message = "not in force until its references resolve, its last good version stays: " + strings.Join(unresolved, "; ")
	case len(partial) > 0:
		accepted.Reason = ReasonPartiallyInvalid
		accepted.Message = "in force but for: " + strings.Join(partial, "; ")
	}
	conds := []metav1.Condition{accepted}
	if p.HasRefs {
		resolved := metav1.Condition{Type: ResolvedRefs, Status: metav1.ConditionTrue, Reason: ReasonResolvedRefs,
			Message: "every host and subset resolves"}
		switch {
		case len(unresolved) > 0:
			resolved.Status, resolved.Reason, resolved.Message = metav1.ConditionFalse, ReasonRefNotFound, strings.Join(unresolved, "; ")
		case len(p.Missing) > 0:
			resolved.Status, resolved.Reason, resolved.Message = metav1.ConditionFalse, ReasonBackendNotFound,
				"not found: "+strings.Join(p.Missing, "; ")
		}
		conds = append(conds, resolved)
	}
	return stamp(conds, p.Conditions, p.Generation, now)
}

// VirtualServiceMissing lists the destinations and mirrors of vs whose host is a Service of
// the cluster (domain) that does not exist.
func VirtualServiceMissing(vs *istioapi.VirtualService, domain string, services Lookup) []string {
	var out []string
	check := func(field, host string) {
		if n, ns, ok := serviceOfHost(host, vs.Namespace, domain); ok && !services(ns, n) {
			out = append(out, fmt.Sprintf("%s.host: Service %s/%s", field, ns, n))
		}
	}
	for i, h := range vs.Spec.HTTP {
		for j, r := range h.Route {
			check(fmt.Sprintf("spec.http[%d].route[%d].destination", i, j), r.Destination.Host)
		}
		if h.Mirror != nil {
			check(fmt.Sprintf("spec.http[%d].mirror", i), h.Mirror.Host)
		}
		for j, m := range h.Mirrors {
			check(fmt.Sprintf("spec.http[%d].mirrors[%d].destination", i, j), m.Destination.Host)
		}
	}
	for i, t := range vs.Spec.TCP {
		for j, r := range t.Route {
			check(fmt.Sprintf("spec.tcp[%d].route[%d].destination", i, j), r.Destination.Host)
		}
	}
	for i, t := range vs.Spec.TLS {
		for j, r := range t.Route {
			check(fmt.Sprintf("spec.tls[%d].route[%d].destination", i, j), r.Destination.Host)
		}
	}
	return out
}

// DestinationRuleMissing is dr's host when it is a Service of the cluster that does not exist.
func DestinationRuleMissing(dr *istioapi.DestinationRule, domain string, services Lookup) []string {
	if n, ns, ok := serviceOfHost(dr.Spec.Host, dr.Namespace, domain); ok && !services(ns, n) {
		return []string{fmt.Sprintf("spec.host: Service %s/%s", ns, n)}
	}
	return nil
}

// serviceOfHost is the Service a host names as Istio reads it in namespace ns: a short name,
// name.namespace, or a hostname of the cluster's domain; not a host outside the cluster.
func serviceOfHost(host, ns, domain string) (name, namespace string, ok bool) {
	if host == "" || strings.Contains(host, "*") {
		return "", "", false
	}
	rest, ok := strings.CutSuffix(model.ResolveHost(host, ns, domain), ".svc."+domain)
	if !ok {
		return "", "", false
	}
	name, namespace, ok = strings.Cut(rest, ".")
	if !ok || name == "" || namespace == "" || strings.Contains(namespace, ".") {
		return "", "", false
	}
	return name, namespace, true
}
