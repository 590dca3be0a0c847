// Package caserver is the controller's CertificateService (ambit.ca.v1): it authenticates the
// caller's bearer token to a Caller, checks that the requested SPIFFE ID belongs to a pod on
// the caller's node (a node proxy) or is the caller's own (a waypoint with its pod's token),
// and signs the CSR with the mesh CA.
//
// It also holds what the controller's gRPC port needs to know who is calling, shared with the
// xDS server: the Authenticator interface with a local implementation (TokenDir, a folder of
// per-node token files) and a Kubernetes one (TokenReview), and the serving TLS configuration
// (ServerTLS) under the controller's own SPIFFE ID.
//
// Errors are mapped to gRPC codes in one place (toStatus): UNAUTHENTICATED for a missing,
// forged or expired token, PERMISSION_DENIED for an identity the caller may not have or a CSR
// with extra SANs, INVALID_ARGUMENT for a malformed CSR or lifetime, UNAVAILABLE when the
// token cannot be checked right now. Every refusal is logged with the caller's node.
package caserver
