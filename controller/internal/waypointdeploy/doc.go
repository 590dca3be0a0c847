// Package waypointdeploy runs the waypoints of a Kubernetes cluster: for every Gateway with
// gatewayClassName ambit-waypoint it renders the waypoint template (deploy/waypoint/
// waypoint.yaml, built in as DefaultTemplate) into a ServiceAccount named after the Gateway
// (the waypoint's identity), a Deployment of waypoint/cmd/waypoint and a ClusterIP Service,
// server-side applies them controlled by the Gateway, and writes the Gateway's status: the
// Service's cluster IP as its address, which the model turns into the Waypoint's address, and
// the conditions Accepted and Programmed.
//
// Decisions are pure functions of their inputs: Desired (Gateway and settings → objects, or
// an error naming the Gateway's field or the template's) and gatewayStatus (what a reconcile
// found → conditions and addresses). The Reconciler around them is informers, a work queue and
// API calls; it runs on the leader only.
//
// An object is applied only when it is missing or its ambit.dev/applied-hash differs from
// the desired one, so a reconcile that changes nothing writes nothing, and fields others
// own (replicas set by kubectl scale, an autoscaler, annotations) are left alone. An object of
// the waypoint's name that the Gateway does not control is never taken over: the Gateway's
// Programmed condition says which one is in the way. A Gateway that is deleted or leaves the
// class has its objects deleted here, as well as by the garbage collector through their
// ownerReferences.
package waypointdeploy
