// Package hbone implements HBONE, the HTTP-Based Overlay Network Environment that Istio
// ambient uses between node proxies: one HTTP/2 CONNECT stream per proxied TCP connection,
// inside a TLS 1.3 connection on which both sides present SPIFFE X.509 SVIDs.
//
// The package carries its own HTTP/2 connection engine on top of golang.org/x/net/http2's
// frame codec rather than net/http, for three reasons:
//
//   - A TCP half-close must travel as END_STREAM in both directions while the other
//     direction keeps flowing. net/http's server handler API cannot end the response
//     stream independently of the request body.
//   - "200 only after the upstream connect succeeded" and typed failures need the status to
//     be under the handler's control, not written implicitly.
//   - The per-byte path matters: the mesh adds one tunnel hop to every connection, and the
//     stock HTTP/2 stack costs 1.5-1.9x a raw TLS hop in round-trip latency.
//
// Client pools connections per (source identity, destination identity, destination
// address) and never shares one across source identities. Server terminates HBONE, checks
// the peer certificate against the trust bundle, applies the anti-spoofing check to the
// CONNECT authority and hands each stream to a Handler.
package hbone
