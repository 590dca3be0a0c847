package lab

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/identity/identitytest"
	"ambit.dev/mesh/wait"
	"ambit.dev/proto/dump"
)

// TestLabRootRotation rotates the lab's mesh root from the controller's own root to an
// intermediate of another root, in the three steps of docs/operations.md (each a change of
// the CA dir and a controller restart), while the client opens a new connection every 50 ms
// to the server and to demo/web through the waypoint web-wp. Every call must succeed over
// mTLS. The proxies (both ztunnels and the waypoint) are not restarted: each step reaches
// them over the controller connection, and each step waits for all of them, as the procedure
// says. At the end they trust the new root only, every certificate is the new CA's, and
// ztunnels started afterwards (from --root-cert, the controller's trust-bundle.pem) serve
// traffic too.
func TestLabRootRotation(t *testing.T) {
	st := webWaypoint(t)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	var nodes []string
	for _, n := range st.Nodes {
		nodes = append(nodes, n.Name)
	}
	defer refreshState(t)
	caDir := filepath.Join(e2eOpts.Dir, "ca")
	oldFP := fingerprints(t, filepath.Join(caDir, "root-cert.pem"))
	pki := identitytest.NewUserPKI(t, time.Now().Add(365*24*time.Hour))
	newRoot, inter, interKey := pki.Root, pki.Inter, pki.InterKeyPEM
	newFP := identity.Fingerprint(newRoot)
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(caDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	certPEM := func(c *x509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}

	// One loop to the server (ztunnel to ztunnel), one to demo/web through the waypoint.
	loops := []func() []attempt{trafficLoop(client, "http://"+server.IP+":8080/"), trafficLoop(client, "http://"+webVIP+"/")}
	stop := func() []attempt {
		var all []attempt
		for _, l := range loops {
			all = append(all, l()...)
		}
		return all
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	roots := func(want ...string) func() error {
		return func() error {
			proxies, err := labProxies(nodes)
			if err != nil {
				return err
			}
			for name, p := range proxies {
				if w := slices.Sorted(slices.Values(want)); !slices.Equal(p.roots, w) {
					return fmt.Errorf("%s trusts %v, want %v", name, p.roots, w)
				}
			}
			return nil
		}
	}
	issuedByNew := func() error {
		proxies, err := labProxies(nodes)
		if err != nil {
			return err
		}
		for name, p := range proxies {
			for _, c := range p.certs {
				if c.Issuer != inter.Subject.String() {
					return fmt.Errorf("%s: %s issued by %q, want %q", name, c.ID, c.Issuer, inter.Subject.String())
				}
			}
		}
		return nil
	}
	steps := []struct {
		name   string
		change func()
		done   func() error
	}{
		{"1: trust the new root too", func() { write("extra-roots.pem", certPEM(newRoot)) }, roots(oldFP, newFP)},
		{"2: sign with the new CA", func() {
			write("ca-cert.pem", certPEM(inter))
			write("ca-key.pem", interKey)
			write("cert-chain.pem", append(certPEM(inter), certPEM(newRoot)...))
		}, func() error { return errors.Join(issuedByNew(), roots(oldFP, newFP)()) }},
		{"3: remove the old root", func() {
			retired := t.TempDir()
			for _, f := range []string{"root-cert.pem", "root-key.pem", "extra-roots.pem"} {
				if err := os.Rename(filepath.Join(caDir, f), filepath.Join(retired, f)); err != nil {
					t.Fatal(err)
				}
			}
		}, roots(newFP)},
	}
	begin := time.Now()
	for _, s := range steps {
		start := time.Now()
		s.change()
		stopLabController(t)
		startLabController(t)
		wait.Until(t, 90*time.Second, s.name, s.done)
		t.Logf("step %s: every ztunnel and waypoint there %v after the change", s.name, time.Since(start).Round(100*time.Millisecond))
	}
	rotation := time.Since(begin)
	time.Sleep(time.Second)
	calls := stop()
	stopped = true
	var failed []string
	for _, c := range calls {
		if c.err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", c.start.Format("15:04:05.000"), c.err))
		}
	}
	t.Logf("root rotated in %v (three controller restarts): %d calls over mTLS, %d failed", rotation.Round(100*time.Millisecond), len(calls), len(failed))
	if len(failed) > 0 {
		t.Fatalf("%d of %d calls failed: %v", len(failed), len(calls), failed[:min(len(failed), 5)])
	}
	if len(calls) < 200 {
		t.Fatalf("only %d calls during the rotation", len(calls))
	}

	// New ztunnels start from --root-cert, the trust-bundle.pem the controller wrote: the new
	// root only. They reach the controller, get the new CA's certificates and carry traffic.
	// (The traffic loop is stopped first: during a hand-over the echo's peer lookup may reach
	// a ztunnel that does not carry the connection and report it as plaintext, whatever the
	// root.)
	restartZtunnels(t, nodes, nil)
	wait.Until(t, 30*time.Second, "new ztunnels on the new root", func() error { return errors.Join(roots(newFP)(), issuedByNew()) })
	for i := range 10 {
		e, err := get(client, "http://"+server.IP+":8080/")
		if err == nil && (!e.MTLS || e.Identity != "spiffe://cluster.local/ns/demo/sa/client") {
			err = fmt.Errorf("answered %+v, want the client's identity over mTLS", e)
		}
		if err != nil {
			t.Fatalf("call %d after the ztunnels restarted on the new root: %v", i, err)
		}
	}
}

// fingerprints is identity.Fingerprint of the one certificate in path.
func fingerprints(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return identity.Fingerprint(c)
}

// proxyTrust is what one proxy of the lab trusts and serves: its roots' fingerprints, sorted,
// and the certificates it serves with.
type proxyTrust struct {
	roots []string
	certs []dump.CertInfo
}

// labProxies is what every ztunnel of nodes and every waypoint of the lab trusts and serves,
// by "ztunnel <node>" and "waypoint <namespace>/<name>", from their /config_dump.
func labProxies(nodes []string) (map[string]proxyTrust, error) {
	view := func(roots []dump.Root, certs []dump.CertInfo) proxyTrust {
		var p proxyTrust
		for _, r := range roots {
			p.roots = append(p.roots, r.Fingerprint)
		}
		slices.Sort(p.roots)
		for _, c := range certs {
			if c.State.Serving() {
				p.certs = append(p.certs, c)
			}
		}
		return p
	}
	out := map[string]proxyTrust{}
	for _, n := range nodes {
		d, err := ztunnelDump(n)
		if err != nil {
			return nil, err
		}
		out["ztunnel "+n] = view(d.TrustBundle, d.Certificates)
	}
	st, err := LoadState(e2eOpts.Dir)
	if err != nil {
		return nil, err
	}
	for _, w := range st.Waypoints {
		resp, err := http.Get("http://" + w.AdminAddr + "/config_dump")
		if err != nil {
			return nil, fmt.Errorf("waypoint %s/%s: %w", w.Namespace, w.Name, err)
		}
		var d dump.Waypoint
		err = json.NewDecoder(resp.Body).Decode(&d)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("waypoint %s/%s's config_dump: %w", w.Namespace, w.Name, err)
		}
		out["waypoint "+w.Namespace+"/"+w.Name] = view(d.TrustBundle, d.Certificates)
	}
	return out, nil
}
