// Package corev3 holds Node and ControlPlane, the two messages of Envoy's envoy.config.core.v3
// that the delta xDS stream carries, generated from base.proto (make proto) with Envoy's names
// and field numbers. It replaces Envoy's generated package, which brings in the whole of
// envoy.config.core.v3; a program must not link both, since they register the same names.
package corev3
