// Package peer runs the benchmark's peers: other proxies as pairs of TLS 1.3 mutual-TLS
// tunnels, one in the client pod that listens on loopback and originates TLS, one in the
// server pod that terminates it and forwards to the application. That is the hop count of
// two ztunnels. Each peer is a Kind (HAProxy, nginx's stream module, stunnel) that renders a
// Side's configuration and names the command that runs it; the certificates are SPIFFE SVIDs
// signed by the lab's own CA (Issue), so every peer carries the same identities and key type
// (ECDSA P-256) as the mesh.
//
// None of these proxies can match a SPIFFE ID: they verify the peer's chain to the lab's root,
// and the clients check the server's DNS name (a SAN the peers' certificates carry beside
// their SPIFFE ID; HAProxy checks the chain only). The ztunnels also check the peer's SPIFFE
// ID, a little more work than the peers do.
package peer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Tunnel is one forwarded port: Listen accepts, Upstream is dialled for each connection.
type Tunnel struct {
	Name     string
	Listen   string
	Upstream string
	// Authority is, for HBONE peers, the address the server side dials: the CONNECT
	// request's authority (Upstream is then the server side's HBONE address).
	Authority string
}

// Side is one process of a pair.
type Side struct {
	// Client originates TLS towards Upstream; a server side terminates TLS on Listen.
	Client  bool
	Tunnels []Tunnel
	// CertFile holds the side's certificate chain and key (Issue), CAFile the root it trusts.
	CertFile string
	CAFile   string
	// ServerName is the DNS name a client side checks in the server's certificate, ServerID
	// its SPIFFE ID (for the peers that can check one).
	ServerName string
	ServerID   string
	// Dir holds the process's own files (logs, pid file, nginx's temporary paths).
	Dir string
	// Threads is HAProxy's nbthread or nginx's worker count; 0 leaves each proxy's default
	// (HAProxy: a thread per CPU; nginx: a worker per CPU). stunnel has a thread per connection.
	Threads int
}

// Kind is one peer proxy.
type Kind struct {
	// Scenario is the benchmark row's name, e.g. "nginx-mtls".
	Scenario string
	// Binary is the command, looked up on the PATH (and in /usr/sbin, /usr/bin).
	Binary string
	// Render writes the configuration of a side.
	Render func(Side) (string, error)
	// Args are the command's arguments to run in the foreground with configuration file.
	Args func(file string) []string
	// Forks says the process serves from child processes (nginx's workers), whose CPU and
	// memory count too.
	Forks bool
	// ChecksName says the client side checks the server's DNS name (HAProxy's does not).
	ChecksName bool
}

// Kinds are the peers, by scenario name.
var Kinds = map[string]Kind{
	HAProxy.Scenario:      HAProxy,
	Nginx.Scenario:        Nginx,
	Stunnel.Scenario:      Stunnel,
	IstioGoHBONE.Scenario: IstioGoHBONE,
}

func (s Side) check(kind string) error {
	if len(s.Tunnels) == 0 {
		return fmt.Errorf("%s: no tunnels", kind)
	}
	if s.CertFile == "" || s.CAFile == "" {
		return fmt.Errorf("%s: certificate and CA files are required", kind)
	}
	if s.Client && s.ServerName == "" {
		return fmt.Errorf("%s: a client side needs the server's name", kind)
	}
	for _, t := range s.Tunnels {
		if t.Name == "" || t.Listen == "" || t.Upstream == "" {
			return fmt.Errorf("%s: tunnel %+v: name, listen and upstream are required", kind, t)
		}
		if strings.ContainsAny(t.Name+t.Listen+t.Upstream+t.Authority, " \t\n;{}[]#\"'") {
			return fmt.Errorf("%s: tunnel %+v: a field holds a character configuration files give meaning to", kind, t)
		}
	}
	return nil
}

func (s Side) role() string {
	if s.Client {
		return "client"
	}
	return "server"
}

// anyHost writes a listen address without a host (":8443", as Go and HAProxy take it) with
// the proxy's own word for every address.
func anyHost(listen, wildcard string) string {
	if strings.HasPrefix(listen, ":") {
		return wildcard + listen
	}
	return listen
}

// Path finds the kind's command in dirs (where the benchmark builds its own commands), on
// the PATH, or in the system directories a root PATH has (Debian puts haproxy and nginx in
// /usr/sbin).
func (k Kind) Path(dirs ...string) (string, error) {
	for _, d := range dirs {
		if p := filepath.Join(d, k.Binary); isExec(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath(k.Binary); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		if p := filepath.Join(d, k.Binary); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", k.Binary)
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
