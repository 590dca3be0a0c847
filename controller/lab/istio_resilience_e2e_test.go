package lab

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
)

// The resilience tests apply Istio's DestinationRule and VirtualService to Service res
// (pods res-0 to res-3, bound to the waypoint web-wp with demo/web), which no other test
// sends to: the waypoint's ejections and pools of the other tests' endpoints never reach
// them. Each test prints the figures it measured.

const (
	resVIP  = "10.96.7.30"
	resHost = "demo/res.demo.svc.cluster.local"
)

var resPods = []string{"demo/res-0", "demo/res-1", "demo/res-2", "demo/res-3"}

// resPodStates are the lab's states of resPods, in order.
func resPodStates(t *testing.T, st *State) []*PodState {
	t.Helper()
	var res []*PodState
	for _, p := range resPods {
		ns, name, _ := strings.Cut(p, "/")
		res = append(res, pod(t, st, ns, name))
	}
	return res
}

// outcome is one timed request.
type outcome struct {
	code       int
	pod        string
	start, end time.Time
	err        error
}

func (o outcome) took() time.Duration { return o.end.Sub(o.start) }

// timed makes one request with callWith and times it.
func timed(from *PodState, url string, header http.Header) outcome {
	o := outcome{start: time.Now()}
	o.code, o.pod, o.err = callWith(from, url, header)
	o.end = time.Now()
	return o
}

// concurrently runs f for 0..n-1, conc at a time, and returns the outcomes in that order.
func concurrently(n, conc int, f func(i int) outcome) []outcome {
	out := make([]outcome, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = f(i)
		}()
	}
	wg.Wait()
	return out
}

// p99 is the 99th percentile of the outcomes' durations.
func p99(outs []outcome) time.Duration {
	d := make([]time.Duration, len(outs))
	for i, o := range outs {
		d[i] = o.took()
	}
	slices.Sort(d)
	return d[(len(d)*99+99)/100-1]
}

// labWaypoint is the lab's state of the waypoint web-wp.
func labWaypoint() (*WaypointState, error) {
	st, err := LoadState(e2eOpts.Dir)
	if err != nil {
		return nil, err
	}
	if w := st.waypoint("demo", waypoint); w != nil {
		return w, nil
	}
	return nil, fmt.Errorf("lab state has no waypoint demo/%s", waypoint)
}

// waypointTableHas reports whether the waypoint's /config_dump holds a route table for
// Service svc ("<namespace>/<hostname>") whose JSON contains every one of want.
func waypointTableHas(svc string, want ...string) error {
	w, err := labWaypoint()
	if err != nil {
		return err
	}
	resp, err := http.Get("http://" + w.AdminAddr + "/config_dump")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var dump struct{ Routes map[string]json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		return fmt.Errorf("waypoint /config_dump: %w", err)
	}
	for _, raw := range dump.Routes {
		var tbl struct{ Service string }
		if json.Unmarshal(raw, &tbl) != nil || tbl.Service != svc {
			continue
		}
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return err
		}
		for _, s := range want {
			if !strings.Contains(b.String(), s) {
				return fmt.Errorf("the waypoint's table for %s has no %s yet: %s", svc, s, b.Bytes())
			}
		}
		return nil
	}
	return fmt.Errorf("the waypoint has no route table for %s yet", svc)
}

// waypointCounter sums the samples of the waypoint's metric name whose labels contain every
// one of labels (`key="value"`).
func waypointCounter(name string, labels ...string) (float64, error) {
	w, err := labWaypoint()
	if err != nil {
		return 0, err
	}
	resp, err := http.Get("http://" + w.IP + ":15020/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// hits asks pod p (an http-echo) how many requests for path it has served. It asks from
// outside the mesh: through the waypoint a request to a pod of Service res would follow the
// Service's routes, to any of its pods.
func hits(p *PodState, path string) (int, error) {
	outsider, err := e2eState.Pod("outside", "outsider")
	if err != nil {
		return 0, err
	}
	resp, err := Client(outsider.NetNS, 5*time.Second).Get("http://" + p.IP + ":8080/hits?path=" + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Ambit-Pod") != p.Namespace+"/"+p.Name {
		return 0, fmt.Errorf("/hits of %s: %s from %q", p.Name, resp.Status, resp.Header.Get("X-Ambit-Pod"))
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// sumHits is hits summed over pods.
func sumHits(pods []*PodState, path string) (int, error) {
	n := 0
	for _, p := range pods {
		h, err := hits(p, path)
		if err != nil {
			return 0, err
		}
		n += h
	}
	return n, nil
}

// setPodLabels gives the lab pod ns/name labels in the controller's folder, as when its
// labels change in Kubernetes; nil puts back the lab file's.
func setPodLabels(st *State, ns, name string, labels map[string]string) error {
	topo, err := LoadTopology("testdata/lab.yaml")
	if err != nil {
		return err
	}
	found := false
	for i, p := range topo.Pods {
		if p.Namespace == ns && p.Name == name {
			found = true
			if labels != nil {
				topo.Pods[i].Labels = labels
			}
		}
	}
	if !found {
		return fmt.Errorf("testdata/lab.yaml has no pod %s/%s", ns, name)
	}
	b, err := podObjects(topo)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(st.ConfigDir, podsFile), b)
}

// resReady waits until sequential requests to Service res reach all four pods: no pod is
// ejected or left out by an earlier test.
func resReady(t *testing.T, client *PodState) {
	t.Helper()
	wait.Until(t, settle, "every res pod answering", func() error {
		seen := map[string]int{}
		for i := 0; i < 40 && len(seen) < len(resPods); i++ {
			code, p, err := callWith(client, "http://"+resVIP+"/", nil)
			if err != nil || code != 200 {
				return fmt.Errorf("status %d, %v", code, err)
			}
			seen[p]++
		}
		if len(seen) < len(resPods) {
			return fmt.Errorf("40 requests reached only %v", seen)
		}
		return nil
	})
}

// TestLabWaypointIstioCircuitBreaker: a DestinationRule's outlierDetection (5 failures in a
// row, baseEjectionTime 2 s) on Service res, extending TestLabWaypointIstioOutlierDetection
// (threshold and ejection) to the whole cycle. The endpoint failing 5 times in a row stops
// receiving traffic, gets exactly one trial once the ejection ends however many requests
// come meanwhile, and, the trial succeeding, is back in rotation.
func TestLabWaypointIstioCircuitBreaker(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/res-istio-breaker.yaml")
	wait.Until(t, settle, "the DestinationRule in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"Consecutive5xx":5`, `"BaseEjection":2000000000`, `"MaxEjectionPercent":50`)
	})
	resReady(t, client) // also resets res-0's count of failures of earlier tests
	const base = 2 * time.Second

	// Round robin: res-0 gets every fourth request, and fails each of them.
	failures := 0
	var fifth outcome
	for i := 0; i < 60 && failures < 5; i++ {
		o := timed(client, "http://"+resVIP+"/flaky/100?pods=demo/res-0", nil)
		if o.err != nil {
			t.Fatal(o.err)
		}
		switch {
		case o.code == 200 && o.pod != "demo/res-0":
		case o.code == 503 && o.pod == "demo/res-0":
			failures++
			fifth = o
		default:
			t.Fatalf("request %d: %d from %q", i, o.code, o.pod)
		}
	}
	if failures != 5 {
		t.Fatalf("res-0 failed %d requests, want 5 in a row", failures)
	}

	// The waypoint ejected res-0 after it saw the fifth failure: the ejection ends after
	// fifth.start+base. On res-0 the requests wait 3 s, so the trial is in flight from then
	// until at least fifth.start+base+3s; the workers stop starting requests 1 s before.
	const trialWait = 3 * time.Second
	stop := fifth.start.Add(base + trialWait - time.Second)
	url := "http://" + resVIP + "/delay/3s?pods=demo/res-0"
	var mu sync.Mutex
	var all []outcome
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				o := timed(client, url, nil)
				mu.Lock()
				all = append(all, o)
				mu.Unlock()
				if o.err != nil || o.code != 200 {
					return
				}
			}
		}()
	}
	wg.Wait()
	var trials []outcome
	ejectedFor, during := 0, 0
	for _, o := range all {
		if o.err != nil || o.code != 200 {
			t.Fatalf("a request while res-0 was ejected or on trial: %d, %v", o.code, o.err)
		}
		if o.pod == "demo/res-0" {
			trials = append(trials, o)
		} else if o.end.Before(fifth.start.Add(base)) {
			ejectedFor++
		}
	}
	if len(trials) != 1 {
		t.Fatalf("res-0 answered %d requests after its ejection, want exactly 1 (the trial): %+v", len(trials), trials)
	}
	trial := trials[0]
	if trial.end.Before(fifth.start.Add(base + trialWait)) {
		t.Fatalf("the trial ended %v after the fifth failure began: before the ejection (%v) and its wait could", trial.end.Sub(fifth.start), base)
	}
	for _, o := range all {
		if o.pod != "demo/res-0" && !o.start.Before(trial.start) && !o.end.After(trial.end) {
			during++
		}
	}
	if ejectedFor < 10 || during < 10 {
		t.Fatalf("%d requests during the ejection and %d during the trial: too few to show res-0 left out", ejectedFor, during)
	}

	// The trial succeeded: res-0 is back, every fourth request.
	back := 0
	for i := 0; i < 20; i++ {
		code, p, err := callWith(client, "http://"+resVIP+"/", nil)
		if err != nil || code != 200 {
			t.Fatalf("after the trial: %d, %v", code, err)
		}
		if p == "demo/res-0" {
			back++
		}
	}
	if back < 4 {
		t.Fatalf("after a successful trial res-0 answered %d of 20 round-robin requests, want 5", back)
	}
	t.Logf("res-0 failed 5 in a row; then 0 of %d requests during the ejection and 0 of %d during the trial reached it; one trial %v after the 5th failure (%v in flight); then %d of 20 requests",
		ejectedFor, during, trial.start.Sub(fifth.start).Round(time.Millisecond), trial.took().Round(time.Millisecond), back)
}

// TestLabWaypointIstioPoolOverflow: a DestinationRule's connectionPool with maxConnections 1
// and http1MaxPendingRequests 1: of 10 concurrent requests to a backend that takes 2 s, one
// is served, one waits for it, and the 8 others get 503 at once, counted by the waypoint's
// ambit_waypoint_upstream_overflow_total.
func TestLabWaypointIstioPoolOverflow(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/res-istio-pool.yaml")
	wait.Until(t, settle, "the DestinationRule in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"MaxConnections":1`, `"MaxPending":1`)
	})
	overflows := func() float64 {
		n, err := waypointCounter("ambit_waypoint_upstream_overflow_total", `reason="pending"`, `destination_service="res.demo.svc.cluster.local`)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := overflows()
	const delay, n = 2 * time.Second, 10
	http15 := Client(client.NetNS, 15*time.Second)
	outs := concurrently(n, n, func(int) outcome {
		o := outcome{start: time.Now()}
		resp, err := http15.Get("http://" + resVIP + "/delay/2s")
		o.end, o.err = time.Now(), err
		if err == nil {
			o.code, o.pod = resp.StatusCode, resp.Header.Get("X-Ambit-Pod")
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return o
	})
	var served, refused []time.Duration
	for _, o := range outs {
		switch {
		case o.err != nil:
			t.Fatal(o.err)
		case o.code == 200:
			served = append(served, o.took())
		case o.code == 503 && o.pod == "":
			refused = append(refused, o.took())
		default:
			t.Fatalf("%d from %q, want 200 from a pod or 503 from the waypoint", o.code, o.pod)
		}
	}
	slices.Sort(served)
	slices.Sort(refused)
	if len(served) != 2 || len(refused) != n-2 {
		t.Fatalf("%d served (%v), %d refused (%v); want 2 served (one connection, one pending) and %d refused", len(served), served, len(refused), refused, n-2)
	}
	if served[1] < 2*delay-200*time.Millisecond {
		t.Fatalf("the second request served took %v: it did not wait for the first (%v)", served[1], 2*delay)
	}
	if worst := refused[len(refused)-1]; worst > delay/4 {
		t.Fatalf("a refused request took %v: not at once (the backend takes %v)", worst, delay)
	}
	var delta float64
	wait.Until(t, settle, "the overflow counted", func() error {
		if delta = overflows() - before; delta != n-2 {
			return fmt.Errorf("ambit_waypoint_upstream_overflow_total grew by %v, want %d", delta, n-2)
		}
		return nil
	})
	t.Logf("%d concurrent requests, backend 2 s: served after %v and %v; %d refused with 503 in %v to %v; overflow metric +%v",
		n, served[0].Round(time.Millisecond), served[1].Round(time.Millisecond), len(refused),
		refused[0].Round(time.Millisecond), refused[len(refused)-1].Round(time.Millisecond), delta)
}

// TestLabWaypointIstioConsistentHash: a DestinationRule's consistentHash by header x-user:
// every one of 1,000 requests (200 keys, 5 each) reaches its key's pod, and when one of the
// four pods leaves the Service only that pod's keys move.
func TestLabWaypointIstioConsistentHash(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	apply(t, "testdata/policies/res-istio-hash.yaml")
	wait.Until(t, settle, "the DestinationRule in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"HashHeader":"X-User"`)
	})
	resReady(t, client)
	const keys, rounds = 200, 5
	user := func(k int) http.Header { return http.Header{"X-User": {fmt.Sprintf("user-%d", k)}} }
	outs := concurrently(keys*rounds, 8, func(i int) outcome { return timed(client, "http://"+resVIP+"/", user(i%keys)) })
	before := make([]string, keys)
	perPod := map[string]int{}
	for i, o := range outs {
		if o.err != nil || o.code != 200 {
			t.Fatalf("request %d: %d, %v", i, o.code, o.err)
		}
		k := i % keys
		if before[k] == "" {
			before[k] = o.pod
			perPod[o.pod]++
		} else if before[k] != o.pod {
			t.Fatalf("key user-%d reached %s and %s", k, before[k], o.pod)
		}
	}
	if len(perPod) != len(resPods) {
		t.Fatalf("%d keys reached only %v", keys, perPod)
	}

	// res-3 leaves Service res (its labels change), then comes back.
	if err := setPodLabels(st, "demo", "res-3", map[string]string{"app": "res-gone"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := setPodLabels(st, "demo", "res-3", nil); err != nil {
			t.Error(err)
			return
		}
		resReady(t, client)
	})
	var moved []int
	for k, p := range before {
		if p == "demo/res-3" {
			moved = append(moved, k)
		}
	}
	wait.Until(t, settle, "res-3 out of Service res", func() error {
		for _, k := range moved {
			if code, p, err := callWith(client, "http://"+resVIP+"/", user(k)); err != nil || code != 200 || p == "demo/res-3" {
				return fmt.Errorf("user-%d: %d from %s, %v", k, code, p, err)
			}
		}
		return nil
	})
	after := concurrently(keys, 8, func(k int) outcome { return timed(client, "http://"+resVIP+"/", user(k)) })
	changed := 0
	for k, o := range after {
		if o.err != nil || o.code != 200 || o.pod == "demo/res-3" {
			t.Fatalf("user-%d without res-3: %d from %q, %v", k, o.code, o.pod, o.err)
		}
		if o.pod != before[k] {
			changed++
			if before[k] != "demo/res-3" {
				t.Fatalf("user-%d moved from %s to %s, though only res-3 left", k, before[k], o.pod)
			}
		}
	}
	pct := float64(changed) / keys * 100
	if changed != len(moved) || pct > 30 {
		t.Fatalf("%d of %d keys moved (%.1f%%), want the %d of res-3 and at most 30%%", changed, keys, pct, len(moved))
	}
	t.Logf("1,000 requests, %d keys × %d: 100%% to their key's pod (keys per pod %v); res-3 removed: %d of %d keys moved (%.1f%%), all of them res-3's",
		keys, rounds, perPod, changed, keys, pct)
}

// TestLabWaypointIstioMirror: a VirtualService mirror with mirrorPercentage 100 copies every
// request to Service server, counted there; a mirror that hangs for 8 s leaves the client's
// p99 as it is with a mirror that answers at once.
func TestLabWaypointIstioMirror(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	mirrors := []*PodState{pod(t, st, "demo", "server"), pod(t, st, "demo", "server-2")}
	apply(t, "testdata/policies/res-istio-mirror.yaml")
	wait.Until(t, settle, "the VirtualService in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"Mirrors":[{`, `"Percent":100`)
	})
	// copies counts the copies to server that ended (sent, failed or dropped), or those of
	// one result.
	copies := func(result ...string) float64 {
		n, err := waypointCounter("ambit_waypoint_mirrored_requests_total", append(result, `destination_service="server.demo.svc.cluster.local"`)...)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	start, dropped := copies(), copies(`result="dropped"`)
	run := func(n int, path string) []outcome {
		outs := concurrently(n, 8, func(int) outcome { return timed(client, "http://"+resVIP+path, nil) })
		for _, o := range outs {
			if o.err != nil || o.code != 200 || !slices.Contains(resPods, o.pod) {
				t.Fatalf("GET %s: %d from %q, %v", path, o.code, o.pod, o.err)
			}
		}
		return outs
	}

	const n = 500
	path := fmt.Sprintf("/mirror/%d", time.Now().UnixNano())
	run(n, path)
	wait.Until(t, settle, "every copy ended", func() error {
		if d := copies() - start; d != n {
			return fmt.Errorf("%v of %d copies ended", d, n)
		}
		return nil
	})
	got, err := sumHits(mirrors, path)
	if err != nil {
		t.Fatal(err)
	}
	if got < n*99/100 || got > n {
		t.Fatalf("the mirror received %d copies of %d requests, want ≥ 99%%", got, n)
	}

	// The same requests to res, whose mirror answers at once, then hangs for 8 s: the
	// waypoint's answers do not wait for it.
	const m, hang = 300, 8 * time.Second
	quick := p99(run(m, "/delay/1ms?pods=demo/server,demo/server-2"))
	hung := p99(run(m, "/delay/8s?pods=demo/server,demo/server-2"))
	// A client that waited for the mirror would wait 8 s; the margin over the quick p99 is
	// for a busy machine's scheduling.
	if hung > hang/10 || hung > quick+250*time.Millisecond {
		t.Fatalf("p99 %v with a mirror that hangs %v, %v with one that answers at once", hung, hang, quick)
	}
	// Every copy is accounted for (sent, failed or dropped) once the hung ones end, so the
	// next test starts with no copy in flight.
	wait.Until(t, hang+5*time.Second, "the hung copies to end", func() error {
		if d := copies() - start; d != n+2*m {
			return fmt.Errorf("%v of %d copies ended", d, n+2*m)
		}
		return nil
	})
	t.Logf("mirror received %d of %d requests (%.1f%%); client p99 over %d requests: %v with the mirror answering at once, %v with it hanging %v (%v copies dropped beyond the waypoint's bound on copies in flight)",
		got, n, float64(got)/n*100, m, quick.Round(time.Millisecond), hung.Round(time.Millisecond), hang, copies(`result="dropped"`)-dropped)
}

// TestLabWaypointIstioRetries: a VirtualService's retries (attempts 3, retryOn 5xx) hide two
// pods of four failing 30% of requests with 503; its timeout and perTryTimeout answer 504
// on time. The DestinationRule turns outlier detection off (consecutive5xxErrors: 0), so the
// failures eject no pod.
func TestLabWaypointIstioRetries(t *testing.T) {
	st := webWaypoint(t)
	client := pod(t, st, "demo", "client")
	res := resPodStates(t, st)
	apply(t, "testdata/policies/res-istio-retry.yaml")
	wait.Until(t, settle, "the VirtualService in the waypoint's config", func() error {
		return waypointTableHas(resHost, `"Attempts":3`, `"Attempts":2`, `"BackendTimeout":250000000`, `"Outlier":true`)
	})
	resReady(t, client)

	const n = 600
	flaky := "/flaky/30"
	attempts0, err := sumHits(res, flaky)
	if err != nil {
		t.Fatal(err)
	}
	outs := concurrently(n, 8, func(int) outcome {
		return timed(client, "http://"+resVIP+flaky+"?pods=demo/res-0,demo/res-1", nil)
	})
	ok := 0
	for _, o := range outs {
		if o.err == nil && o.code == 200 {
			ok++
		}
	}
	attempts, err := sumHits(res, flaky)
	if err != nil {
		t.Fatal(err)
	}
	attempts -= attempts0
	success := float64(ok) / n * 100
	if success < 99 {
		t.Fatalf("%d of %d requests succeeded (%.1f%%) through 3 retries, want ≥ 99%%", ok, n, success)
	}
	if attempts <= n {
		t.Fatalf("%d attempts for %d requests: no retry was made", attempts, n)
	}

	// A backend that hangs: the route's 1 s timeout answers 504 after one attempt; with
	// x-per-try: short, each of 3 attempts is cut at 250 ms, well before the 5 s timeout.
	for _, tc := range []struct {
		name, path string
		header     http.Header
		attempts   int
		min, max   time.Duration
	}{
		{"timeout 1s", "/delay/10s", nil, 1, time.Second, 2500 * time.Millisecond},
		{"perTryTimeout 250ms × 3", "/delay/11s", http.Header{"X-Per-Try": {"short"}}, 3, 750 * time.Millisecond, 2500 * time.Millisecond},
	} {
		h0, err := sumHits(res, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		o := timed(client, "http://"+resVIP+tc.path, tc.header)
		if o.err != nil || o.code != http.StatusGatewayTimeout || o.pod != "" {
			t.Fatalf("%s: %d from %q, %v; want 504 from the waypoint", tc.name, o.code, o.pod, o.err)
		}
		if o.took() < tc.min || o.took() > tc.max {
			t.Fatalf("%s: 504 after %v, want between %v and %v", tc.name, o.took(), tc.min, tc.max)
		}
		// An attempt cut by its timeout may still be on its way to the pod.
		wait.Until(t, settle, tc.name+": the attempts at the pods", func() error {
			h, err := sumHits(res, tc.path)
			if err == nil && h-h0 != tc.attempts {
				err = fmt.Errorf("%d attempts, want %d", h-h0, tc.attempts)
			}
			return err
		})
		t.Logf("%s: 504 after %v, %d attempts", tc.name, o.took().Round(time.Millisecond), tc.attempts)
	}
	t.Logf("%d requests, res-0 and res-1 failing 30%%: %.1f%% success, %d attempts (%d retries)", n, success, attempts, attempts-n)
}
