// Package model turns Kubernetes objects (Namespaces, Pods, Services, ServiceAccounts,
// Gateway API Gateways and HTTPRoutes, and ambit's AuthorizationPolicy and PeerAuthentication)
// into the resources of ambit.config.v1 that the controller pushes to proxies.
//
// The conversions are pure functions of their inputs (ConvertService, ConvertGateway,
// ConvertHTTPRoute, ConvertAuthorizationPolicy, PeerAuthMode, BuildWorkload, ...). Index holds
// the current set of objects, recomputes only the resources an object change can affect, and
// answers For(proxy): the resources one proxy should hold, each with a version that is a hash of
// its deterministic encoding so a push server can diff cheaply.
//
// Decisions (also in docs/architecture.md):
//
//   - Enrolment: a pod is in the mesh when its own label ambit.dev/dataplane-mode is "ambient",
//     or when it has no such label and its Namespace's label is "ambient". Any other pod value
//     ("none") opts the pod out. Every Running pod with an IP becomes a Workload; pods outside
//     the mesh get tunnel protocol NONE so others reach them in plain TCP.
//   - Waypoint binding follows Istio: the most specific ambit.dev/use-waypoint label wins. For a
//     Workload: Pod > ServiceAccount > Namespace. For a Service: Service > Namespace. The value
//     "none" on a more specific object cancels a less specific binding. A binding applies only
//     when the waypoint serves that kind of traffic (ambit.dev/waypoint-for: serviceaccount for
//     workloads, service for Services, namespace for both). Bindings name a Gateway in the
//     object's own namespace. A binding to a waypoint that does not exist (yet) is kept with no
//     address: traffic fails closed instead of bypassing the waypoint.
//   - A waypoint's identity is spiffe://<td>/ns/<ns>/sa/<gateway name> (Istio names the
//     waypoint's ServiceAccount after its Gateway); its address is the first IP of the Gateway's
//     status.addresses, else of spec.addresses.
//   - An object that fails validation yields one *ObjectError naming kind, namespace, name and
//     field; the Index keeps the last good version of that object in force.
package model
