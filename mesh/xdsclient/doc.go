// Package xdsclient is the proxy side of the controller's configuration push: a delta xDS client
// (envoy.service.discovery.v3 AggregatedDiscoveryService.DeltaAggregatedResources) that
// carries ambit's own resource types (package configv1) as google.protobuf.Any, and a client
// of the controller's CertificateService that serves as an identity.Signer.
//
// ztunnel and waypoint share it, so there is one implementation of the protocol's rules:
//
//   - A proxy names itself in DeltaDiscoveryRequest.node: id, plus metadata keys
//     MetaNodeName, MetaKind, MetaWaypointNamespace and MetaWaypointName (see NodeInfo). The
//     controller checks the node name against the bearer token's node.
//   - Every call carries "authorization: Bearer <token>". The connection is TLS 1.3 with the
//     mesh root as the only trust anchor, and the server must prove the controller's SPIFFE ID
//     (ControllerID).
//   - Each subscribed type is a wildcard subscription. A response is handed to the Handler as
//     one batch; an error NACKs it (error_detail) and the proxy keeps what it had, success ACKs
//     it with the response nonce.
//   - The client remembers the versions it applied; after a reconnect it sends them as
//     initial_resource_versions, so the controller sends only what changed meanwhile. While
//     disconnected nothing is cleared: the proxy keeps serving its last config.
package xdsclient
