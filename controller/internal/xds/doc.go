// Package xds is the controller's side of the configuration push: a delta xDS server
// (envoy.service.discovery.v3 AggregatedDiscoveryService.DeltaAggregatedResources) that sends
// each connected ztunnel and waypoint the resources a Generator computes for it, as
// google.protobuf.Any of ambit's own types.
//
// Each stream is owned by one goroutine that keeps, per type, the versions the proxy holds:
// what it declared in initial_resource_versions on connect, advanced by each ACK. Push starts
// a new generation (pushes arriving within Options.Debounce are coalesced); every stream then
// asks the Generator for its proxy's resources and sends, per type, one response with only
// the resources whose version differs and the names that disappeared, or nothing at all.
// A type has at most one response in flight; a push arriving meanwhile is folded into the
// next one, sent when the ACK or NACK comes back. A NACK leaves the proxy's versions where
// they were and is not retried until the next push, so a bad resource cannot cause a loop.
//
// The proxy's token is authenticated to a node before anything else, and a proxy whose Node
// metadata names another node is refused with PERMISSION_DENIED.
package xds
