package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"testing"

	"ambit.dev/mesh/identity/identitytest"
)

// TestBadURISANsRefused: over real mTLS handshakes, a server refuses a client, and a client
// a server, whose certificate chains to the trusted root but carries two SPIFFE IDs, a
// SPIFFE ID beside another URI, or a SPIFFE ID with a NUL or another control byte.
func TestBadURISANsRefused(t *testing.T) {
	bad := map[string][]string{
		"two SPIFFE IDs":  {"spiffe://cluster.local/ns/default/sa/server", "spiffe://cluster.local/ns/default/sa/client"},
		"ID and URI":      {"spiffe://cluster.local/ns/default/sa/server", "https://server.example"},
		"NUL":             {"spiffe://cluster.local/ns/default/sa/server\x00x"},
		"LF":              {"spiffe://cluster.local/ns/default/sa/server\n"},
		"percent-escaped": {"spiffe://cluster.local/ns/default/sa/server%00"},
	}
	eachProtocol(t, func(t *testing.T, proto envOption) {
		root := identitytest.NewRawRoot(t, "cluster.local")
		useRoot := func(e *env, s *ServerConfig, c *ClientConfig) {
			s.Bundle, c.Bundle = root.Bundle(), root.Bundle()
			e.certs.set(e.clientID, root.Leaf(t, e.clientID.String()))
			e.certs.set(e.serverID, root.Leaf(t, e.serverID.String()))
		}
		for _, side := range []string{"server", "client"} {
			for name, uris := range bad {
				t.Run(side+"/"+name, func(t *testing.T) {
					e := newEnv(t, proto, useRoot)
					var served atomic.Bool
					e.handler = HandlerFunc(func(ctx context.Context, r *Request) { served.Store(true); _ = Forward(ctx, r, dialTCP) })
					// The well-formed pair of the same root works.
					st, err := e.client.Dial(context.Background(), e.target())
					if err != nil {
						t.Fatalf("dial with well-formed SVIDs: %v", err)
					}
					st.Close()
					e.client.Close()
					e.client, _ = NewClient(ClientConfig{Certificate: e.certs.get, Bundle: root.Bundle()})
					t.Cleanup(func() { e.client.Close() })
					served.Store(false)

					var c *tls.Certificate = root.Leaf(t, uris...)
					if side == "server" {
						e.certs.set(e.serverID, c)
					} else {
						e.certs.set(e.clientID, c)
					}
					st, err = e.client.Dial(context.Background(), e.target())
					if err == nil {
						st.Close()
						t.Fatalf("dial succeeded with a %s certificate carrying %q", side, uris)
					}
					if !errors.Is(err, ErrIdentity) {
						t.Errorf("error %v, want an identity error", err)
					}
					if served.Load() {
						t.Error("handler ran for a refused peer")
					}
				})
			}
		}
	})
}
