package identity_test

import (
	"errors"
	"strings"
	"testing"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
)

// badSANs are URI SANs an SVID must never be accepted with: more than one SPIFFE ID (which
// one would policy see?), a SPIFFE ID beside another URI, and IDs with NUL or other control
// bytes, raw or percent-encoded, that could cut or forge an ID in a log line, a metric label
// or a C string.
var badSANs = map[string][]string{
	"two SPIFFE IDs":            {"spiffe://cluster.local/ns/default/sa/web", "spiffe://cluster.local/ns/kube-system/sa/admin"},
	"SPIFFE ID and https URI":   {"spiffe://cluster.local/ns/default/sa/web", "https://web.example"},
	"NUL":                       {"spiffe://cluster.local/ns/default/sa/web\x00.admin"},
	"NUL in trust domain":       {"spiffe://cluster.local\x00evil.example/ns/default/sa/web"},
	"CR LF":                     {"spiffe://cluster.local/ns/default/sa/web\r\nx: y"},
	"tab":                       {"spiffe://cluster.local/ns/default/sa/web\t"},
	"DEL":                       {"spiffe://cluster.local/ns/default/sa/web\x7f"},
	"escape":                    {"spiffe://cluster.local/ns/default/sa/\x1b[2Jweb"},
	"percent-encoded NUL":       {"spiffe://cluster.local/ns/default/sa/web%00"},
	"percent-encoded newline":   {"spiffe://cluster.local/ns/default/sa/web%0a"},
	"space":                     {"spiffe://cluster.local/ns/default/sa/web admin"},
	"no URI at all (empty SAN)": {},
}

func TestVerifyPeerRefusesBadURISANs(t *testing.T) {
	root := identitytest.NewRawRoot(t, "cluster.local")
	good := root.Leaf(t, "spiffe://cluster.local/ns/default/sa/web")
	if id, err := identity.VerifyPeer(good.Certificate, root.Bundle()); err != nil || id.String() != "spiffe://cluster.local/ns/default/sa/web" {
		t.Fatalf("well-formed leaf of the raw root: %v, %v", id, err)
	}
	for name, uris := range badSANs {
		t.Run(name, func(t *testing.T) {
			cert := root.Leaf(t, uris...)
			id, err := identity.VerifyPeer(cert.Certificate, root.Bundle())
			if err == nil {
				t.Fatalf("VerifyPeer accepted URI SANs %q as %s", uris, id)
			}
			if !errors.Is(err, identity.ErrNotSVID) {
				t.Fatalf("VerifyPeer error = %v, want ErrNotSVID", err)
			}
			if len(uris) > 1 && !strings.Contains(err.Error(), "exactly one SPIFFE ID") {
				t.Fatalf("VerifyPeer error = %v, want it to say an SVID carries exactly one SPIFFE ID", err)
			}
			if !id.IsZero() {
				t.Fatalf("VerifyPeer returned id %s with an error", id)
			}
		})
	}
}
