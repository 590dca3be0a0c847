// Package app assembles the controller: a source (a YAML folder or Kubernetes) feeding the
// Store and model Index, the CA root, the metrics and health endpoints, leader election, and
// the hooks where the xDS push server and the CA gRPC service plug in (PushServer,
// CAService). Run returns when its context ends, after every part has stopped.
package app
