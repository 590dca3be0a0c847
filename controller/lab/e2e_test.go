package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/mesh/e2elock"
	"ambit.dev/mesh/gobuild"
	"ambit.dev/mesh/wait"
)

// The end-to-end tests run one lab (testdata/lab.yaml) with the real binaries: controller,
// ztunnels and ambitctl built from this tree. They need root, like the lab.

const (
	e2ePrefix   = "ambite2e"
	e2ePortBase = 25000
	enrolLabel  = "ambit.dev/dataplane-mode"
)

var (
	e2eOnce  sync.Once
	e2eState *State
	e2eOpts  Options
	e2eErr   error
	// e2eRelease gives back the exclusive e2elock taken before the lab came up.
	e2eRelease func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 && e2eState != nil {
		// Keep the processes' logs of a failed run: lab down removes the state dir.
		if keep, err := os.MkdirTemp("", "ambit-lab-e2e-logs-"); err == nil {
			if out, err := exec.Command("cp", "-r", filepath.Join(e2eOpts.Dir, "logs"), keep).CombinedOutput(); err == nil {
				fmt.Fprintf(os.Stderr, "lab logs of the failed run: %s/logs\n", keep)
			} else {
				fmt.Fprintf(os.Stderr, "keep lab logs: %v %s\n", err, out)
			}
		}
	}
	if e2eState != nil {
		if err := Down(context.Background(), e2eOpts); err != nil {
			fmt.Fprintln(os.Stderr, "lab down:", err)
			code = 1
		}
	}
	if e2eOpts.BinDir != "" {
		os.RemoveAll(e2eOpts.BinDir)
	}
	if e2eRelease != nil {
		e2eRelease()
	}
	os.Exit(code)
}

// e2eLab brings the test lab up once for the package, or skips without root.
func e2eLab(t *testing.T) *State {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the lab creates network namespaces, links and iptables rules")
	}
	e2eOnce.Do(func() {
		bin, err := os.MkdirTemp("", "ambit-lab-bin-")
		if err != nil {
			e2eErr = err
			return
		}
		e2eOpts = Options{Dir: filepath.Join(os.TempDir(), "ambit-lab-e2e"), BinDir: bin, Ambitctl: filepath.Join(bin, "ambitctl"),
			Prefix: e2ePrefix, PortBase: e2ePortBase, Out: os.Stderr}
		if err := gobuild.Build("", bin+"/", nil, "ambit.dev/controller/cmd/controller",
			"ambit.dev/controller/cmd/ambitctl", "ambit.dev/ztunnel/cmd/ztunnel", "ambit.dev/waypoint/cmd/waypoint"); err != nil {
			e2eErr = fmt.Errorf("build the lab binaries: %w", err)
			return
		}
		topo, err := LoadTopology("testdata/lab.yaml")
		if err != nil {
			e2eErr = err
			return
		}
		// Alone on the machine: no test cluster beside the lab (e2elock); released by
		// TestMain once the lab is down.
		if e2eRelease, e2eErr = e2elock.Exclusive(); e2eErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		e2eState, e2eErr = Up(ctx, topo, e2eOpts)
	})
	if e2eErr != nil {
		t.Fatal(e2eErr)
	}
	return e2eState
}

func pod(t *testing.T, st *State, ns, name string) *PodState {
	t.Helper()
	p, err := st.Pod(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// get makes one HTTP GET from pod to url and decodes the echo; the error says why it failed.
func get(from *PodState, url string) (Echo, error) {
	resp, err := Client(from.NetNS, 3*time.Second).Get(url + "?format=json")
	if err != nil {
		return Echo{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return Echo{}, fmt.Errorf("%s", resp.Status)
	}
	var e Echo
	return e, json.NewDecoder(resp.Body).Decode(&e)
}

// tcpEcho sends a line from pod to addr (a tcp-echo app) and expects it back.
func tcpEcho(from *PodState, addr string) error {
	c, err := DialIn(from.NetNS, addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := "ping " + time.Now().String() + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// settle bounds the wait for a change to take effect: config reaches the ztunnels within a
// second or two.
const settle = 15 * time.Second

func refused(err error) error {
	if err == nil {
		return fmt.Errorf("the call passed; want it refused")
	}
	return nil
}

func setEnrolled(t *testing.T, st *State, ns string, on bool) {
	t.Helper()
	var err error
	if on {
		_, err = configdir.SetNamespaceLabel(st.ConfigDir, ns, enrolLabel, "ambient")
	} else {
		_, err = configdir.RemoveNamespaceLabel(st.ConfigDir, ns, enrolLabel)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitCaptured(context.Background(), e2eOpts.Dir, ns, on, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}

// settled waits until demo/client reaches demo/server on both ports: a policy an earlier test
// removed in its cleanup may take a moment to leave the ztunnels.
func settled(t *testing.T, st *State) {
	t.Helper()
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	wait.Until(t, settle, "no policy left in the way", func() error {
		if _, err := get(client, "http://"+server.IP+":8080/"); err != nil {
			return err
		}
		return tcpEcho(client, server.IP+":9000")
	})
}

func apply(t *testing.T, file string) {
	t.Helper()
	if _, err := Apply(e2eOpts.Dir, file); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Delete(e2eOpts.Dir, file) })
}

// netState is everything capture may touch in a pod: iptables rules of every table (without
// counters), policy rules and routes of every table.
func netState(t *testing.T, netns string) string {
	t.Helper()
	var b strings.Builder
	for _, argv := range [][]string{{"iptables-save"}, {"ip", "rule"}, {"ip", "route", "show", "table", "all"}} {
		out, err := exec.Command("nsenter", append([]string{"--net=" + netns, "--"}, argv...)...).Output()
		if err != nil {
			t.Fatalf("%v in %s: %v", argv, netns, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			if strings.HasPrefix(l, ":") {
				l = strings.Join(strings.Fields(l)[:2], " ")
			}
			fmt.Fprintln(&b, l)
		}
	}
	return b.String()
}

func TestLabEnrolmentLeavesPodAsBefore(t *testing.T) {
	st := e2eLab(t)
	server := pod(t, st, "demo", "server")
	setEnrolled(t, st, "demo", false)
	before := netState(t, server.NetNS)
	setEnrolled(t, st, "demo", true)
	during := netState(t, server.NetNS)
	if !strings.Contains(during, "AMBIT_") {
		t.Fatalf("enrolled pod has no AMBIT_ rules:\n%s", during)
	}
	setEnrolled(t, st, "demo", false)
	var after string
	wait.Until(t, settle, "pod namespace as before enrolment", func() error {
		if after = netState(t, server.NetNS); after != before {
			return fmt.Errorf("differs:\n%s", lineDiff(before, after))
		}
		return nil
	})
	// and it is reachable in plaintext again, without identity
	e, err := get(pod(t, st, "demo", "client"), "http://"+server.IP+":8080/")
	if err != nil || e.MTLS {
		t.Fatalf("after removal: %+v, %v; want a plaintext answer", e, err)
	}
}

func TestLabTrafficAcrossNodes(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	if client.Node == server.Node {
		t.Fatal("topology: client and server must be on different nodes")
	}
	e, err := get(client, "http://"+server.IP+":8080/")
	if err != nil {
		t.Fatal(err)
	}
	if !e.MTLS || e.Identity != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Fatalf("server saw identity %q (mtls %v), want the client's over mTLS", e.Identity, e.MTLS)
	}
	if !strings.HasPrefix(e.Caller, client.IP+":") {
		t.Fatalf("server saw caller %s, want the client's address %s kept", e.Caller, client.IP)
	}
	if err := tcpEcho(client, server.IP+":9000"); err != nil {
		t.Fatal(err)
	}
}

func TestLabServiceLoadBalancing(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client := pod(t, st, "demo", "client")
	hits := map[string]int{}
	const n = 60
	for i := 0; i < n; i++ {
		e, err := get(client, "http://10.96.7.10:80/")
		if err != nil {
			t.Fatalf("call %d to the Service VIP: %v", i, err)
		}
		if !e.MTLS {
			t.Fatalf("call %d reached %s without mTLS", i, e.Pod)
		}
		hits[e.Pod]++
	}
	// Two endpoints: each should take a fair share; 15 of 60 is far outside chance.
	for _, p := range []string{"demo/server", "demo/server-2"} {
		if hits[p] < 15 {
			t.Fatalf("VIP spread %v over %d calls: %s got under 15", hits, n, p)
		}
	}
	if err := tcpEcho(client, "10.96.7.10:9000"); err != nil {
		t.Fatalf("TCP through the VIP: %v", err)
	}
}

func TestLabStrictAndPermissive(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	outsider, client, server := pod(t, st, "outside", "outsider"), pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	url := "http://" + server.IP + ":8080/"
	// PERMISSIVE (the default): plaintext from outside the mesh is let in, without identity.
	e, err := get(outsider, url)
	if err != nil {
		t.Fatalf("PERMISSIVE: plaintext from outside the mesh: %v", err)
	}
	if e.MTLS || e.Identity != "" {
		t.Fatalf("PERMISSIVE: outsider arrived as %+v, want plaintext", e)
	}
	apply(t, "../../examples/policies/strict.yaml")
	wait.Until(t, settle, "STRICT refuses plaintext", func() error { _, err := get(outsider, url); return refused(err) })
	if _, err := get(client, url); err != nil {
		t.Fatalf("STRICT: the client over HBONE: %v", err)
	}
	if err := Delete(e2eOpts.Dir, "../../examples/policies/strict.yaml"); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "PERMISSIVE again", func() error { _, err := get(outsider, url); return err })
}

func TestLabAllowAndDeny(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, other, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "other"), pod(t, st, "demo", "server")
	url := "http://" + server.IP + ":8080/"
	apply(t, "../../examples/policies/allow-client-http.yaml")
	wait.Until(t, settle, "ALLOW leaves out other", func() error { _, err := get(other, url); return refused(err) })
	if _, err := get(client, url); err != nil {
		t.Fatalf("ALLOW: client on 8080: %v", err)
	}
	if err := refused(tcpEcho(client, server.IP+":9000")); err != nil {
		t.Fatalf("ALLOW names port 8080 only: client on 9000: %v", err)
	}
	apply(t, "../../examples/policies/deny-client.yaml")
	wait.Until(t, settle, "DENY wins over ALLOW", func() error { _, err := get(client, url); return refused(err) })
	if err := Delete(e2eOpts.Dir, "../../examples/policies/deny-client.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := Delete(e2eOpts.Dir, "../../examples/policies/allow-client-http.yaml"); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, "open again", func() error {
		if _, err := get(other, url); err != nil {
			return err
		}
		return tcpEcho(client, server.IP+":9000")
	})
}

// TestLabControllerAway stops the controller for a minute: traffic keeps flowing on the
// config and certificates the ztunnels hold, and a controller back again takes over.
func TestLabControllerAway(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	if err := stop(st.Controller.PID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			startLabController(t)
		}
	}()
	away := 60 * time.Second
	if testing.Short() {
		away = 10 * time.Second
	}
	calls := 0
	for end := time.Now().Add(away); time.Now().Before(end); time.Sleep(time.Second) {
		e, err := get(client, "http://"+server.IP+":8080/")
		if err != nil {
			t.Fatalf("call %d with the controller away for %v: %v", calls, time.Since(end.Add(-away)).Round(time.Second), err)
		}
		if !e.MTLS {
			t.Fatalf("call %d not in the mesh: %+v", calls, e)
		}
		if err := tcpEcho(client, "10.96.7.10:9000"); err != nil {
			t.Fatalf("VIP call %d with the controller away: %v", calls, err)
		}
		calls++
	}
	restarted = true
	// Under the state lock: the new controller's `lab waypoints-sync` saves the state too.
	startLabController(t)
	// The controller is back in charge: a new policy reaches the ztunnels.
	apply(t, "../../examples/policies/deny-client.yaml")
	wait.Until(t, settle, "policy after the controller came back", func() error {
		_, err := get(client, "http://"+server.IP+":8080/")
		return refused(err)
	})
	t.Logf("%d calls with the controller away for %v, all passed", calls, away)
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out strings.Builder
	for l, n := range count {
		for ; n > 0; n-- {
			fmt.Fprintf(&out, "- %s\n", l)
		}
		for ; n < 0; n++ {
			fmt.Fprintf(&out, "+ %s\n", l)
		}
	}
	return out.String()
}

// TestLabZtunnelRestart replaces the ztunnels of both nodes, one after the other, while the
// client opens a new connection to the server every 50 ms: every connection must succeed
// (Istio's own bar is 90%), and a connection opened before the hand-over keeps working
// while the old ztunnel drains.
func TestLabZtunnelRestart(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")

	long, err := DialIn(client.NetNS, server.IP+":9000", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	longEcho := func() error {
		_ = long.SetDeadline(time.Now().Add(3 * time.Second))
		msg := "still here " + time.Now().String() + "\n"
		if _, err := io.WriteString(long, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(long, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q", buf)
		}
		return nil
	}
	if err := longEcho(); err != nil {
		t.Fatal(err)
	}

	var phase atomic.Value
	phase.Store("before the restarts")
	stop := make(chan struct{})
	type result struct {
		n            int
		errs         []string
		lookupMisses int
	}
	done := make(chan result)
	go func() {
		var r result
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				done <- r
				return
			case <-tick.C:
			}
			r.n++
			e, err := get(client, "http://"+server.IP+":8080/")
			switch {
			case err != nil:
				r.errs = append(r.errs, fmt.Sprintf("%s (%s): %v", time.Now().Format("15:04:05.000"), phase.Load(), err))
			case !e.PeerKnown:
				// Carried, but the echo's identity lookup missed: it asked the node API
				// while the socket changed hands. Counted apart, bounded below.
				r.lookupMisses++
			case !e.MTLS:
				r.errs = append(r.errs, fmt.Sprintf("%s (%s): answered in plaintext, outside the mesh (%+v)",
					time.Now().Format("15:04:05.000"), phase.Load(), e))
			}
		}
	}()

	ctx := context.Background()
	o := e2eOpts
	o.Out = io.Discard
	for i, node := range []string{server.Node, client.Node} {
		if i > 0 {
			// the old ztunnel closed what it drained: a new long-lived connection
			long.Close()
			if long, err = DialIn(client.NetNS, server.IP+":9000", 3*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		phase.Store("restarting ztunnel " + node)
		next, err := RestartZtunnel(ctx, o, node, func() error {
			phase.Store("ztunnel " + node + " handed over, the old one draining")
			if err := longEcho(); err != nil {
				return fmt.Errorf("a connection opened before the hand-over, while the old ztunnel drains: %w", err)
			}
			return nil
		})
		if err != nil {
			close(stop)
			<-done
			t.Fatal(err)
		}
		t.Logf("ztunnel %s now pid %d", node, next.Ztunnel.PID)
		phase.Store("after the restart of " + node)
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	r := <-done
	if r.n < 100 {
		t.Fatalf("only %d connections during the restarts; the test did not load the hand-over", r.n)
	}
	if len(r.errs) > 0 {
		t.Fatalf("%d of %d new connections failed across the ztunnel restarts:\n%s", len(r.errs), r.n, strings.Join(r.errs, "\n"))
	}
	// The peer lookup is the lab echo's way to show identity, not the data path; a miss
	// while the node API socket changes hands is tolerated, a pattern of them is not.
	if r.lookupMisses > 2 {
		t.Fatalf("%d of %d identity lookups missed across the restarts", r.lookupMisses, r.n)
	}
	t.Logf("%d new connections across two ztunnel restarts, all passed (%d identity lookups missed)", r.n, r.lookupMisses)
	// After each restart the state file names the new processes, so lab down stops them.
	s, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if why := unhealthy(s); why != "" {
		t.Fatalf("lab after the restarts: %s", why)
	}
}
