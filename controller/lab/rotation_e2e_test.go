package lab

import (
	"ambit.dev/mesh/identity/identitytest"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/wait"
)

// TestLabRootRotation rotates the lab's mesh root from the controller's own root to an
// intermediate of another root, in the three steps of docs/operations.md (each a change of
// the CA dir and a controller restart), while the client opens a new connection to the
// server every 50 ms. Every call must succeed over mTLS. The ztunnels are not restarted:
// each step reaches them over the controller connection. At the end they trust the new root
// only, every certificate is the new CA's, and ztunnels started afterwards (from
// --root-cert, the controller's trust-bundle.pem) serve traffic too.
func TestLabRootRotation(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
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

	stop := trafficLoop(client, "http://"+server.IP+":8080/")
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	roots := func(want ...string) func() error {
		return func() error {
			for _, n := range nodes {
				d, err := ztunnelDump(n)
				if err != nil {
					return err
				}
				var got []string
				for _, r := range d.TrustBundle {
					got = append(got, r.Fingerprint)
				}
				slices.Sort(got)
				if w := slices.Sorted(slices.Values(want)); !slices.Equal(got, w) {
					return fmt.Errorf("ztunnel %s trusts %v, want %v", n, got, w)
				}
			}
			return nil
		}
	}
	issuedByNew := func() error {
		certs, err := allCerts(nodes)
		if err != nil {
			return err
		}
		for id, c := range certs {
			if c.Issuer != inter.Subject.String() {
				return fmt.Errorf("%s issued by %q, want %q", id, c.Issuer, inter.Subject.String())
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
		t.Logf("step %s: every ztunnel there %v after the change", s.name, time.Since(start).Round(100*time.Millisecond))
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
	if len(calls) < 100 {
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
