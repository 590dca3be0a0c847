package haproxy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ambit.dev/mesh/identity"
)

func sides(dir string) (client, server Side) {
	client = Side{Client: true, CertFile: filepath.Join(dir, "client.pem"), CAFile: filepath.Join(dir, "ca", "root-cert.pem"),
		Tunnels: []Tunnel{{Name: "http", Listen: "127.0.0.1:28080", Upstream: "10.79.2.2:28443"}}}
	server = Side{CertFile: filepath.Join(dir, "server.pem"), CAFile: filepath.Join(dir, "ca", "root-cert.pem"), Threads: 2,
		Tunnels: []Tunnel{{Name: "http", Listen: ":28443", Upstream: "127.0.0.1:8080"}}}
	return client, server
}

func TestConfig(t *testing.T) {
	client, server := sides("/x")
	c, err := Config(client)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\tbind 127.0.0.1:28080\n",
		"\tserver upstream 10.79.2.2:28443 ssl crt /x/client.pem ca-file /x/ca/root-cert.pem verify required ssl-min-ver TLSv1.3\n",
		"\tmode tcp\n",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("client config lacks %q:\n%s", want, c)
		}
	}
	if strings.Contains(c, "nbthread") {
		t.Errorf("client config sets nbthread though Threads is 0:\n%s", c)
	}
	s, err := Config(server)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\tbind :28443 ssl crt /x/server.pem ca-file /x/ca/root-cert.pem verify required ssl-min-ver TLSv1.3\n",
		"\tserver app 127.0.0.1:8080\n",
		"\tnbthread 2\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("server config lacks %q:\n%s", want, s)
		}
	}
	if _, err := Config(Side{CertFile: "a", CAFile: "b"}); err == nil {
		t.Error("no tunnels accepted")
	}
	if _, err := Config(Side{Tunnels: client.Tunnels}); err == nil {
		t.Error("no certificates accepted")
	}
}

// TestConfigChecksWithHAProxy has haproxy itself check both generated files, with real
// certificates from a fresh CA.
func TestConfigChecksWithHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (make setup installs it)")
	}
	dir := t.TempDir()
	if _, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), identity.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	client, server := sides(dir)
	if err := IssueSVID(filepath.Join(dir, "ca"), "bench", "client", client.CertFile); err != nil {
		t.Fatal(err)
	}
	if err := IssueSVID(filepath.Join(dir, "ca"), "bench", "server", server.CertFile); err != nil {
		t.Fatal(err)
	}
	for name, side := range map[string]Side{"client": client, "server": server} {
		cfg, err := Config(side)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, name+".cfg")
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-c", "-f", file).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c %s: %v\n%s\n%s", name, err, out, cfg)
		}
	}
}
