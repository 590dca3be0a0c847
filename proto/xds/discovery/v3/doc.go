// Package discoveryv3 is the delta xDS stream between the controller and the proxies: Envoy's
// AggregatedDiscoveryService with only DeltaAggregatedResources, and the messages it carries,
// generated from discovery.proto (make proto) with Envoy's names and field numbers, so it
// speaks to any xDS client or server. discovery.proto says which of Envoy's fields it declares
// and why it is a copy. A program must not link both this package and Envoy's generated one,
// since they register the same names.
package discoveryv3
