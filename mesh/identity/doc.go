// Package identity is the mesh's notion of who a workload is and how it proves
// it: SPIFFE IDs of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>,
// a certificate authority that issues X.509-SVIDs for them, a manager that keeps
// a proxy's SVIDs fresh, and the peer verification every mTLS handshake runs.
//
// It lives in proto because ztunnel, waypoint and controller must agree on it
// bit for bit: an identity minted by the controller's CA is parsed by ztunnel,
// presented in HBONE handshakes and matched by authorization policy. Having one
// implementation means a format drift is a compile error, not an outage.
//
// Choices worth knowing:
//
//   - Keys are ECDSA P-256 only, on both the root and the leaves. One curve keeps
//     interop with Istio ambient and leaves no weak option to negotiate down to.
//   - Leaves carry exactly one URI SAN (the SPIFFE ID) and nothing else; identity
//     is never derived from a CN, a DNS name or a header.
//   - The CA signs with its root, or with a signing CA the user supplies (an
//     intermediate and its chain, [LoadCAFiles]); [CA.Sign] returns the chain
//     without the root, which peers get from [CA.Bundle]. The bundle may hold
//     more than one root while the root rotates: proxies keep it in a
//     [TrustBundle], replaced by the bundle that comes with every certificate.
//   - Proxy keys are generated in memory by [Manager], a fresh one per renewal,
//     and never written anywhere. Renewal starts at half-life; a failing signer
//     never interrupts service while the old certificate is still valid.
//   - Time comes from an injected [Clock], so renewal and expiry are tested by
//     moving a fake clock (package identitytest) instead of sleeping.
package identity
