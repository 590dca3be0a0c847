package lab

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ambit.dev/proto/dump"
)

// Chaos tests (issue 13): a ztunnel killed outright, a controller away for longer than half
// a certificate's life. Each leaves the shared lab as it found it, with the state file and
// e2eState naming the processes that run now.

// refreshState copies the state file into e2eState: the tests below replace processes, and
// the later tests (and TestMain's lab down) work from e2eState.
func refreshState(t *testing.T) {
	t.Helper()
	s, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	*e2eState = *s
}

// attempt is one new connection of a traffic loop: when it started and ended, and why it failed.
type attempt struct {
	start, end time.Time
	err        error
}

// trafficLoop opens a new connection from client to url every 50 ms until stop is called,
// which returns every call made.
func trafficLoop(client *PodState, url string) (stop func() []attempt) {
	var (
		mu    sync.Mutex
		calls []attempt
	)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			c := attempt{start: time.Now()}
			e, err := get(client, url)
			if err == nil && !e.MTLS {
				err = fmt.Errorf("answered in plaintext, outside the mesh (%+v)", e)
			}
			c.end, c.err = time.Now(), err
			mu.Lock()
			calls = append(calls, c)
			mu.Unlock()
		}
	}()
	return func() []attempt {
		close(quit)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
}

// TestLabZtunnelKill9 kills the ztunnel of the server's node with SIGKILL while the client
// opens a new connection to the server every 50 ms, then starts a new one as Kubernetes would
// (a plain start: no predecessor to hand over from, the pods come back from pods.json). New
// connections must succeed again within 2 s of the new ztunnel being ready, every rule in
// the node's pods must have survived, and the pods must be captured again.
func TestLabZtunnelKill9(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	node := server.Node
	if client.Node == node {
		t.Fatal("topology: client and server must be on different nodes")
	}
	var onNode []PodState
	before := map[string]string{}
	for _, p := range st.Pods {
		if p.Node == node {
			onNode = append(onNode, p)
			before[p.Namespace+"/"+p.Name] = netState(t, p.NetNS)
		}
	}
	cur, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	victim := cur.node(node).Ztunnel.PID
	defer refreshState(t)

	stopLoop := trafficLoop(client, "http://"+server.IP+":8080/")
	time.Sleep(time.Second) // traffic flows before the kill
	killed := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		stopLoop()
		t.Fatal(err)
	}
	for i := 0; alive(victim); i++ {
		if i == 200 {
			stopLoop()
			t.Fatalf("ztunnel %d still runs 2 s after SIGKILL", victim)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A crashed container is restarted after a moment; the traffic meanwhile shows the outage.
	time.Sleep(time.Second)
	restarted := time.Now()
	var ready time.Time
	o := e2eOpts
	o.Out = io.Discard
	// With the old one dead, RestartZtunnel is a plain start that records the new pid.
	next, err := RestartZtunnel(context.Background(), o, node, func() error { ready = time.Now(); return nil })
	if err != nil {
		stopLoop()
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // long enough to see the 2 s bound kept, and to stay up
	calls := stopLoop()

	var before0, outage, after2s int
	var firstOK time.Time
	var errs []string
	for _, c := range calls {
		switch {
		case c.end.Before(killed): // a call in flight at the kill may fail: part of the outage
			if c.err != nil {
				before0++
				errs = append(errs, fmt.Sprintf("%s before the kill: %v", c.start.Format("15:04:05.000"), c.err))
			}
		case c.err == nil:
			if firstOK.IsZero() || c.end.Before(firstOK) {
				firstOK = c.end
			}
		case c.start.After(ready.Add(2 * time.Second)):
			after2s++
			errs = append(errs, fmt.Sprintf("%s, %v after ready: %v", c.start.Format("15:04:05.000"), c.start.Sub(ready).Round(time.Millisecond), c.err))
		default:
			outage++
		}
	}
	gap := firstOK.Sub(ready)
	t.Logf("ztunnel %s: pid %d killed; new pid %d started %v later, ready %v after its start; %d calls, %d failed during the outage; first success %v after ready",
		node, victim, next.Ztunnel.PID, restarted.Sub(killed).Round(time.Millisecond), ready.Sub(restarted).Round(time.Millisecond),
		len(calls), outage, gap.Round(time.Millisecond))
	if before0 > 0 || after2s > 0 {
		t.Fatalf("calls failed outside the outage:\n%s", strings.Join(errs, "\n"))
	}
	if outage == 0 {
		t.Fatal("no call failed while the ztunnel was dead: the test did not see the outage")
	}
	if firstOK.IsZero() || gap > 2*time.Second {
		t.Fatalf("first successful call %v after the new ztunnel was ready, want within 2 s", gap)
	}

	// The pods are back: captured by the new ztunnel (its node API lists them)...
	if err := WaitCaptured(context.Background(), e2eOpts.Dir, "demo", true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// ... and not one rule or route of theirs was lost or added on the way.
	for _, p := range onNode {
		key := p.Namespace + "/" + p.Name
		if after := netState(t, p.NetNS); after != before[key] {
			t.Errorf("pod %s after the crash and restart differs:\n%s", key, lineDiff(before[key], after))
		}
	}
	s, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.node(node).Ztunnel.PID != next.Ztunnel.PID {
		t.Fatalf("state file names ztunnel pid %d, want the new %d", s.node(node).Ztunnel.PID, next.Ztunnel.PID)
	}
	if why := unhealthy(s); why != "" {
		t.Fatalf("lab after the crash: %s", why)
	}
	settled(t, st)
}

// stopLabController stops the lab's controller, as TestLabControllerAway does.
func stopLabController(t *testing.T) {
	t.Helper()
	s, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(s.Controller.PID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// startLabController starts the lab's controller with args after the lab's own and records
// it in the state file and e2eState, under the state lock: the controller's `lab
// waypoints-sync` saves the state too, and would otherwise write back the old controller.
func startLabController(t *testing.T, args ...string) {
	t.Helper()
	unlock, err := lockState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	s, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	o := e2eOpts
	o.ControllerArgs, o.Out = args, io.Discard
	if err := startController(context.Background(), &o, s); err != nil {
		t.Fatal(err)
	}
	if err := s.save(e2eOpts.Dir); err != nil {
		t.Fatal(err)
	}
	*e2eState = *s
}

// restartZtunnels replaces the ztunnels of nodes at once (RestartZtunnel: hand-over, then the
// old ones drain), calls ready once every new one is ready, and returns when the old ones
// have exited.
func restartZtunnels(t *testing.T, nodes []string, ready func()) {
	t.Helper()
	o := e2eOpts
	o.Out = io.Discard
	readies, errs := make(chan struct{}, len(nodes)), make(chan error, len(nodes))
	for _, n := range nodes {
		go func() {
			signal := sync.OnceFunc(func() { readies <- struct{}{} })
			_, err := RestartZtunnel(context.Background(), o, n, func() error { signal(); return nil })
			signal() // not ready when it failed, but nobody should wait for it
			errs <- err
		}()
	}
	for range nodes {
		<-readies
	}
	if ready != nil {
		ready()
	}
	var failed []string
	for range nodes {
		if err := <-errs; err != nil {
			failed = append(failed, err.Error())
		}
	}
	refreshState(t)
	if len(failed) > 0 {
		t.Fatalf("restart ztunnels: %s", strings.Join(failed, "; "))
	}
}

// heldCerts are the certificates node's ztunnel serves, by identity.
func heldCerts(node string) (map[string]dump.CertInfo, error) {
	d, err := ztunnelDump(node)
	if err != nil {
		return nil, err
	}
	out := map[string]dump.CertInfo{}
	for _, c := range d.Certificates {
		if c.State.Serving() {
			out[node+" "+c.ID.String()] = c
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("ztunnel %s serves no certificate", node)
	}
	return out, nil
}

func allCerts(nodes []string) (map[string]dump.CertInfo, error) {
	all := map[string]dump.CertInfo{}
	for _, n := range nodes {
		c, err := heldCerts(n)
		if err != nil {
			return nil, err
		}
		maps.Copy(all, c)
	}
	return all, nil
}

// logSize is the length of the log at path (0 when there is none yet).
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince counts the lines with msg written to the log at path after offset.
func logSince(path string, offset int64, msg string) int {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return 0
	}
	return strings.Count(string(b[offset:]), msg)
}

// TestLabControllerAwayPastHalfLife runs the mesh on 40 s certificates (controller
// --cert-ttl) and stops the controller for longer than half their life but not all of it:
// the ztunnels' renewals fail and are retried, traffic goes on over mTLS on the certificates
// they hold, and once the controller is back the retries renew them before they expire. The
// lab ends as it began: default certificate lifetime, 24 h certificates.
func TestLabControllerAwayPastHalfLife(t *testing.T) {
	// 40 s: away for 21 s, the controller back leaves the retries (and the gRPC reconnect,
	// up to 6 s) a margin of 19 s, enough on a loaded machine.
	const ttl = 40 * time.Second
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	nodes := []string{client.Node, server.Node}
	defer refreshState(t)
	calls := 0
	check := func(phase string) {
		t.Helper()
		e, err := get(client, "http://"+server.IP+":8080/")
		if err == nil && !e.MTLS {
			err = fmt.Errorf("answered in plaintext: %+v", e)
		}
		if err == nil {
			err = tcpEcho(client, "10.96.7.10:9000")
		}
		if err != nil {
			t.Fatalf("call %d %s: %v", calls, phase, err)
		}
		calls++
	}

	stopLabController(t)
	startLabController(t, "--cert-ttl="+ttl.String())
	restored := false
	restore := func() {
		stopLabController(t)
		startLabController(t)
		// New ztunnels get 24 h certificates at once instead of at the next half-life.
		restartZtunnels(t, nodes, nil)
		certs, err := allCerts(nodes)
		if err != nil {
			t.Fatal(err)
		}
		for id, c := range certs {
			if time.Until(c.NotAfter) < time.Hour {
				t.Fatalf("after the test %s expires at %s, want the default lifetime", id, c.NotAfter)
			}
		}
		restored = true
	}
	defer func() {
		if !restored {
			restore()
		}
	}()

	// Fresh 40 s certificates: new ztunnels, and the controller leaves as soon as they are
	// ready, so that it is away for most of the certificates' life.
	var stopped time.Time
	logs := map[string]int64{}
	restartZtunnels(t, nodes, func() {
		stopLabController(t)
		stopped = time.Now()
		for _, n := range nodes {
			p := e2eOpts.Dir + "/logs/ztunnel-" + n + ".log"
			logs[p] = logSize(p)
		}
	})
	before, err := allCerts(nodes)
	if err != nil {
		t.Fatal(err)
	}
	var renewBy, expireBy time.Time
	for id, c := range before {
		if life := c.NotAfter.Sub(stopped); life > ttl || life < ttl/2 {
			t.Fatalf("%s expires %v after the controller left, want a fresh %v certificate", id, life.Round(time.Second), ttl)
		}
		if c.NextFetch.After(renewBy) {
			renewBy = c.NextFetch
		}
		if expireBy.IsZero() || c.NotAfter.Before(expireBy) {
			expireBy = c.NotAfter
		}
	}
	// Away for more than half the lifetime, and past every certificate's renewal time.
	back := stopped.Add(ttl/2 + time.Second)
	if b := renewBy.Add(time.Second); b.After(back) {
		back = b
	}
	if time.Until(expireBy) < time.Until(back)+8*time.Second {
		t.Fatalf("setup too slow: the controller would be back %v before the first expiry, want 8s or more", expireBy.Sub(back))
	}
	retrying := map[string]bool{}
	for time.Now().Before(back) {
		check("with the controller away")
		if certs, err := allCerts(nodes); err == nil {
			for id, c := range certs {
				if c.State == dump.StateRetrying && c.LastError != "" {
					retrying[id] = true
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	startLabController(t, "--cert-ttl="+ttl.String())
	away := time.Since(stopped)
	if len(retrying) != len(before) {
		t.Errorf("certificates seen retrying while the controller was away: %v of %d", retrying, len(before))
	}
	retries := 0
	for p, off := range logs {
		retries += logSince(p, off, "certificate request failed")
	}
	if retries < len(before) {
		t.Errorf("%d failed renewals logged for %d certificates, want at least one each", retries, len(before))
	}

	// The retries renew every certificate before it expires; traffic goes on meanwhile.
	var renewed time.Time
	for {
		check("after the controller came back")
		certs, err := allCerts(nodes)
		if err != nil {
			t.Fatal(err)
		}
		done := len(certs) == len(before)
		for id, c := range certs {
			done = done && c.NotAfter.After(before[id].NotAfter) && c.State == dump.StateValid
		}
		if done {
			renewed = time.Now()
			break
		}
		if time.Now().After(expireBy) {
			t.Fatalf("certificates not renewed by their expiry, %v after the controller came back: %+v",
				time.Since(stopped.Add(away)).Round(time.Millisecond), certs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for range 4 {
		check("after the renewal")
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("%v certificates: controller away %v (renewals due from %v after it left), %d failed renewals logged; renewed %v after it came back, %v before the first expiry; %d calls, all passed over mTLS",
		ttl, away.Round(time.Millisecond), (ttl / 2).Round(time.Second), retries,
		renewed.Sub(stopped.Add(away)).Round(time.Millisecond), expireBy.Sub(renewed).Round(time.Millisecond), calls)
	restore()
	settled(t, st)
}
