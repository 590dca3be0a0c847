package lab

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakDuration is how long TestLabSoak runs: AMBIT_SOAK (a Go duration; `make soak` sets
// 30m), else two minutes.
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("AMBIT_SOAK")
	if v == "" {
		return 2 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 20*time.Second {
		t.Fatalf("AMBIT_SOAK=%q: want a duration of at least 20s", v)
	}
	return d
}

// soakTarget is a proxy the soak watches.
type soakTarget struct {
	name, metrics string
	pid           int
	samples       [][3]float64 // RSS kB, goroutines, files
}

// TestLabSoak runs mixed traffic at a fixed rate for soakDuration (issue 13): every 50 ms a
// new HTTP connection to the server through the ztunnels, a new TCP echo connection to it, and
// a keep-alive request to demo/web through the waypoint. Every call must succeed, and after a
// warm-up of half the run the RSS, goroutines and open files of both ztunnels and the
// waypoint must stay flat: the median of the last third within 5 % of the median of the first
// third after the warm-up (or within 4 MB of RSS, and for goroutines and files within the calls
// in flight at once).
func TestLabSoak(t *testing.T) {
	dur := soakDuration(t)
	st := webWaypoint(t)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	cur, err := LoadState(e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var targets []*soakTarget
	for _, node := range []string{client.Node, server.Node} {
		n := cur.node(node)
		targets = append(targets, &soakTarget{name: "ztunnel " + node, metrics: "http://" + n.MetricsAddr + "/metrics", pid: n.Ztunnel.PID})
	}
	for _, w := range cur.Waypoints {
		if w.Name == waypoint {
			targets = append(targets, &soakTarget{name: "waypoint " + w.Name, metrics: "http://" + w.IP + ":15020/metrics", pid: w.Proc.PID})
		}
	}
	if len(targets) != 3 {
		t.Fatalf("want two ztunnels and the waypoint, have %d targets", len(targets))
	}

	var calls, failures atomic.Int64
	var firstErr atomic.Value
	keepAlive := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4,
		DialContext: Client(client.NetNS, 5*time.Second).Transport.(*http.Transport).DialContext}}
	ops := []func() error{
		func() error { _, err := get(client, "http://"+server.IP+":8080/"); return err },
		func() error { return tcpEcho(client, server.IP+":9000") },
		func() error {
			resp, err := keepAlive.Get("http://" + webVIP + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s", resp.Status)
			}
			return nil
		},
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, op := range ops {
		wg.Go(func() {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				calls.Add(1)
				if err := op(); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		for _, tg := range targets {
			s, err := tg.sample()
			if err != nil {
				close(stop)
				wg.Wait()
				t.Fatal(err)
			}
			tg.samples = append(tg.samples, s)
		}
		time.Sleep(dur / 40)
	}
	close(stop)
	wg.Wait()
	keepAlive.CloseIdleConnections()

	t.Logf("%v of mixed traffic: %d calls, %d failed", dur, calls.Load(), failures.Load())
	if f := failures.Load(); f > 0 {
		t.Errorf("%d of %d calls failed, first: %v", f, calls.Load(), firstErr.Load())
	}
	for _, tg := range targets {
		tg.judge(t)
	}
}

func (tg *soakTarget) sample() ([3]float64, error) {
	rss, err := procStatusKB(tg.pid, "VmRSS")
	if err != nil {
		return [3]float64{}, fmt.Errorf("%s: %w", tg.name, err)
	}
	fds, err := fdCount(tg.pid)
	if err != nil {
		return [3]float64{}, fmt.Errorf("%s: %w", tg.name, err)
	}
	g, err := scrapeGauge(tg.metrics, "go_goroutines")
	if err != nil {
		return [3]float64{}, fmt.Errorf("%s: %w", tg.name, err)
	}
	return [3]float64{float64(rss), g, float64(fds)}, nil
}

// judge compares the first and the last third of the samples after the warm-up, the first
// half of the run: a Go process's heap and its pages take about a minute of steady traffic
// to reach their size.
func (tg *soakTarget) judge(t *testing.T) {
	t.Helper()
	var rss []string
	for _, v := range tg.samples {
		rss = append(rss, strconv.Itoa(int(v[0])))
	}
	t.Logf("%s: RSS kB over the run: %s", tg.name, strings.Join(rss, " "))
	s := tg.samples[len(tg.samples)/2:]
	third := len(s) / 3
	if third == 0 {
		t.Fatalf("%s: too few samples (%d)", tg.name, len(tg.samples))
	}
	// in flight at once: three loops, each with at most one call and its tunnel's goroutines
	// and files on each proxy; and a Go process's RSS moves by a few MB as its heap target
	// and the scavenger move, which in two minutes is more than 5 % of a 30 MB proxy
	slack := [3]float64{4096, 64, 16}
	var parts []string
	for i, what := range []string{"RSS kB", "goroutines", "files"} {
		a, b := median(s[:third], i), median(s[len(s)-third:], i)
		drift := (b - a) / a
		parts = append(parts, fmt.Sprintf("%s %.0f → %.0f (%+.1f%%)", what, a, b, drift*100))
		if b-a > max(0.05*a, slack[i]) {
			t.Errorf("%s: %s grew from %.0f to %.0f after the warm-up (%+.1f%%)", tg.name, what, a, b, drift*100)
		}
	}
	t.Logf("%s: %s", tg.name, strings.Join(parts, ", "))
}

func median(s [][3]float64, i int) float64 {
	v := make([]float64, len(s))
	for j := range s {
		v[j] = s[j][i]
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// scrapeGauge reads an unlabelled gauge from a Prometheus text page.
func scrapeGauge(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no %s on %s", name, url)
}
