// Package dump is the contract of the proxies' GET /config_dump (ztunnel's and the
// waypoint's loopback admin port): the JSON that `ambitctl ztunnel-config`, `proxy-status`
// and `waypoint` read. The proxies write these types and the CLI decodes the same ones, so
// the two cannot drift apart.
//
// Mesh resources (workloads, services, policies, waypoints) are the protojson of the
// ambit.dev/proto/config/v1 messages, kept raw here so that a reader can print exactly what
// the proxy said; certificates and pods are plain JSON.
package dump

import (
	"encoding/json"
	"time"

	"ambit.dev/proto/nodeapi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sections is a proxy's view of the mesh, each resource in protojson, sorted by name. An
// empty section is an empty list, never null.
type Sections struct {
	Workloads []json.RawMessage `json:"workloads"`
	Services  []json.RawMessage `json:"services"`
	Policies  []json.RawMessage `json:"policies"`
	Waypoints []json.RawMessage `json:"waypoints"`
}

// Ztunnel is ztunnel's /config_dump.
type Ztunnel struct {
	Sections
	Certificates []CertInfo          `json:"certificates"`
	Pods         []nodeapi.PodStatus `json:"pods"`
	// TunnelFallbacks are the peers marked HBONE_H3 that a pod reaches over HTTP/2 for now,
	// because no QUIC handshake with them completed (UDP 15008 blocked, or a peer that does
	// not serve HTTP/3); sorted by pod, then peer. Empty when every tunnel asked to use
	// HTTP/3 does.
	TunnelFallbacks []TunnelFallback `json:"tunnel_fallbacks"`
	// TrustBundle is the roots ztunnel verifies peers and the controller against: those of
	// --root-cert at start, then the bundle the controller's CA sent with the last
	// certificate. Two while the mesh root rotates.
	TrustBundle []Root `json:"trust_bundle,omitempty"`
}

// Root is one root certificate of a proxy's trust bundle.
type Root struct {
	Subject string `json:"subject"`
	// Fingerprint is the first 16 hex digits of the SHA-256 of the certificate's DER: the
	// start of what `openssl x509 -noout -fingerprint -sha256` prints, without colons.
	Fingerprint string    `json:"fingerprint"`
	NotAfter    time.Time `json:"not_after"`
}

// TunnelFallback is one pod's fallback from HTTP/3 to HTTP/2 for one peer.
type TunnelFallback struct {
	// Pod is the pod whose outbound tunnels fell back, "namespace/name".
	Pod string `json:"pod"`
	// Peer is the HBONE address (ip:15008) reached over HTTP/2.
	Peer string `json:"peer"`
	// Until is when the pod tries HTTP/3 to the peer again.
	Until time.Time `json:"until"`
}

// Waypoint is the waypoint's /config_dump: the Gateway's identity, the mesh it sees, its
// compiled route tables by service key (the waypoint's own JSON form of each table) and its
// certificate.
type Waypoint struct {
	Identity string `json:"identity"`
	Sections
	Routes       map[string]json.RawMessage `json:"routes"`
	Certificates []CertInfo                 `json:"certificates"`
	// TrustBundle: as Ztunnel's.
	TrustBundle []Root `json:"trust_bundle,omitempty"`
}

// CertState is where one identity's certificate stands in its life cycle.
type CertState string

// Certificate states.
const (
	StatePending  CertState = "pending"  // no certificate yet, request scheduled or in flight
	StateFailed   CertState = "failed"   // no certificate yet, the last request failed
	StateValid    CertState = "valid"    // certificate served, renewal not yet due
	StateRenewing CertState = "renewing" // certificate served, renewal in flight
	StateRetrying CertState = "retrying" // certificate served, last renewal failed, backing off
	StateExpired  CertState = "expired"  // certificate expired, nothing served
)

// Serving reports whether a certificate in this state is being served to peers.
func (s CertState) Serving() bool {
	return s == StateValid || s == StateRenewing || s == StateRetrying
}

// CertInfo describes one identity's certificate.
type CertInfo struct {
	ID        spiffeid.ID `json:"id"`
	Serial    string      `json:"serial,omitempty"` // hex
	NotBefore time.Time   `json:"not_before,omitzero"`
	NotAfter  time.Time   `json:"not_after,omitzero"`
	NextFetch time.Time   `json:"next_fetch,omitzero"`
	State     CertState   `json:"state"`
	LastError string      `json:"last_error,omitempty"`
	// Issuer is the subject of the CA that signed the certificate: while the root rotates,
	// whether it has moved to the new signing CA yet.
	Issuer string `json:"issuer,omitempty"`
}
