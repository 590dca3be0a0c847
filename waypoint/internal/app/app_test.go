package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ambit.dev/mesh/identity"
)

func TestConfigNamesTheMissingFlag(t *testing.T) {
	good := Config{Name: "wp", Namespace: "shop", TrustDomain: "cluster.local", Node: "node-1",
		Controller: "127.0.0.1:15012", TokenFile: "/t", RootCert: "/r", HBONEAddr: ":15008"}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Name = "" }, "--name"},
		{func(c *Config) { c.TokenFile = "" }, "--token-file"},
		{func(c *Config) { c.RootCert = "" }, "--root-cert"},
		{func(c *Config) { c.TrustDomain = "Bad Domain" }, "--trust-domain"},
		{func(c *Config) { c.Name = "UPPER" }, "--name/--namespace"},
	} {
		c := good
		tc.edit(&c)
		if err := Run(context.Background(), c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one naming %s", err, tc.want)
		}
	}
}

func TestLoadBundle(t *testing.T) {
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(p, ca.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadBundle(ca.TrustDomain(), p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadBundle(ca.TrustDomain(), p); err == nil {
		t.Fatal("a file without PEM was accepted")
	}
	if got := NodeFromTokenFile("/var/lab/tokens/node-2"); got != "node-2" {
		t.Fatal(got)
	}
}
