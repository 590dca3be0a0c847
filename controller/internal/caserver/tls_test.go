package caserver

import (
	"crypto/tls"
	"testing"

	"ambit.dev/mesh/xdsclient"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestServerTLS(t *testing.T) {
	e := newCAEnv(t)
	tests := []struct {
		name string
		conf func() *tls.Config
		ok   bool
	}{
		{"tls 1.3 and the controller's id", func() *tls.Config { return xdsclient.ClientTLS(e.ca.Bundle(), xdsclient.ControllerID(td)) }, true},
		{"tls 1.2 is refused", func() *tls.Config {
			c := xdsclient.ClientTLS(e.ca.Bundle(), xdsclient.ControllerID(td))
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}, false},
		{"another expected id", func() *tls.Config {
			return xdsclient.ClientTLS(e.ca.Bundle(), spiffeid.RequireFromString("spiffe://cluster.local/ns/ambit-system/sa/other"))
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", e.addr, tc.conf())
			if err == nil {
				err = c.Handshake()
				if err == nil && c.ConnectionState().Version != tls.VersionTLS13 {
					t.Errorf("negotiated %x", c.ConnectionState().Version)
				}
				c.Close()
			}
			if (err == nil) != tc.ok {
				t.Errorf("handshake: %v", err)
			}
		})
	}
}
