package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"ambit.dev/controller/internal/configdir"
	"ambit.dev/controller/lab/netem"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
)

// TestLabLossyBridge is the lab's bridge with netem's impairment (issue 13): 1 % loss and
// 20 ms ± 10 ms of delay on every packet it forwards, each way. Every call from the client to
// the server — a new connection each, captured by the client's ztunnel and carried over mTLS
// HBONE to the server's node — succeeds, and the figures are reported.
func TestLabLossyBridge(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	url := "http://" + server.IP + ":8080/?format=json"

	link, err := netem.OnBridge(st.Bridge, netem.Config{Loss: 0.01, Delay: 20 * time.Millisecond, Jitter: 10 * time.Millisecond,
		Queue: uint16(1000 + os.Getpid()%1000)})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	// A lost SYN waits a second for its retransmission; two in a row, three: a call may take
	// seconds, so the client waits as long as an application would.
	hc := Client(client.NetNS, 15*time.Second)
	const calls = 300
	var lat []time.Duration
	var failed, unidentified []string
	for i := range calls {
		start := time.Now()
		err := func() error {
			resp, err := hc.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var e Echo
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				return err
			}
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s", resp.Status)
			}
			if !e.MTLS {
				unidentified = append(unidentified, fmt.Sprintf("call %d", i))
			}
			return nil
		}()
		if err != nil {
			failed = append(failed, fmt.Sprintf("call %d: %v", i, err))
			continue
		}
		lat = append(lat, time.Since(start))
	}
	stats := link.Stats()
	if err := link.Close(); err != nil {
		t.Error(err)
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(float64(len(lat)-1)*p)].Round(100 * time.Microsecond)
	}
	t.Logf("%d of %d calls over mTLS through a bridge with 1%% loss and 20 ms ± 10 ms: p50 %v, p90 %v, p99 %v, max %v; the bridge saw %d packets and dropped %d",
		len(lat), calls, pct(0.5), pct(0.9), pct(0.99), pct(1), stats.Seen, stats.Dropped)
	if len(failed) > 0 {
		t.Errorf("%d calls failed: %v", len(failed), failed)
	}
	// The server's app names its caller by asking its ztunnel about the connection; under
	// loss that lookup can miss a connection the ztunnel is still setting up (a known race,
	// seen 2 times in 300 once), and the call is still carried over mTLS HBONE. More than
	// 1 % unidentified is a failure.
	if len(unidentified) > calls/100 {
		t.Errorf("%d of %d calls answered without the caller's identity: %v", len(unidentified), calls, unidentified)
	} else if len(unidentified) > 0 {
		t.Logf("%d calls answered without the caller's identity (the peer lookup missed them): %v", len(unidentified), unidentified)
	}
	// one round trip across the bridge at least: the impairment was on the mesh's path
	if pct(0.5) < 20*time.Millisecond {
		t.Errorf("median call %v: the bridge's delay did not apply", pct(0.5))
	}
	if stats.Dropped == 0 {
		t.Errorf("no packet dropped of %d at 1%% loss", stats.Seen)
	}
}

// TestLabLossyH3 measures the case for HBONE over HTTP/3 in the lab (issue 14): with 1 % loss
// and 20 ms of delay on the bridge, each way, 16 keep-alive connections from the client to the
// server — 16 streams over one pooled tunnel between the two ztunnels — each make calls one
// after another, first over HTTP/2, then over HTTP/3, then both again (the namespace's
// ambit.dev/tunnel-protocol label switches them). Every call must succeed on both; the
// percentiles and the ratio of the p99s are reported (docs/benchmarks.md quotes them), and
// both ztunnels must have turned their HTTP/3 loss shield on.
func TestLabLossyH3(t *testing.T) {
	st := e2eLab(t)
	setEnrolled(t, st, "demo", true)
	settled(t, st)
	client, server := pod(t, st, "demo", "client"), pod(t, st, "demo", "server")
	url := "http://" + server.IP + ":8080/"
	t.Cleanup(func() {
		if _, err := configdir.RemoveNamespaceLabel(st.ConfigDir, "demo", tunnelLabel); err != nil {
			t.Error(err)
		}
		useTunnel(t, st, client, configv1.TunnelProtocol_HBONE)
	})
	link, err := netem.OnBridge(st.Bridge, netem.Config{Loss: 0.01, Delay: 20 * time.Millisecond, Queue: uint16(2000 + os.Getpid()%1000)})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()

	lat := map[configv1.TunnelProtocol][]time.Duration{}
	for _, p := range []configv1.TunnelProtocol{configv1.TunnelProtocol_HBONE, configv1.TunnelProtocol_HBONE_H3, configv1.TunnelProtocol_HBONE, configv1.TunnelProtocol_HBONE_H3} {
		useTunnel(t, st, client, p)
		l, err := streams(client, url, 16, 100)
		if err != nil {
			t.Fatalf("over %v: %v", p, err)
		}
		lat[p] = append(lat[p], l...)
	}
	stats := link.Stats()
	pct := func(p configv1.TunnelProtocol, q float64) time.Duration {
		l := lat[p]
		slices.Sort(l)
		return l[int(float64(len(l)-1)*q)].Round(100 * time.Microsecond)
	}
	h2, h3 := configv1.TunnelProtocol_HBONE, configv1.TunnelProtocol_HBONE_H3
	t.Logf("16 streams over one pooled tunnel, 1%% loss and 20 ms each way (%d packets, %d dropped); %d calls each: "+
		"HTTP/2 p50 %v p90 %v p99 %v p99.9 %v; HTTP/3 p50 %v p90 %v p99 %v p99.9 %v; p99 H3/H2 %.2f",
		stats.Seen, stats.Dropped, len(lat[h2]), pct(h2, .5), pct(h2, .9), pct(h2, .99), pct(h2, .999),
		pct(h3, .5), pct(h3, .9), pct(h3, .99), pct(h3, .999), float64(pct(h3, .99))/float64(pct(h2, .99)))
	// Both ztunnels measured the loss and shielded their HTTP/3 connection (mesh/hbone/h3loss.go).
	for _, node := range []string{client.Node, server.Node} {
		n := st.node(node)
		if n == nil {
			t.Fatalf("no node %s in the lab state", node)
		}
		dup, err := scrapeGauge("http://"+n.MetricsAddr+"/metrics", "ambit_hbone_h3_duplicated_packets_total")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ztunnel %s: %.0f short QUIC packets sent twice", node, dup)
		if dup == 0 {
			t.Errorf("ztunnel %s sent no packet twice: its loss shield did not turn on at 1%% loss", node)
		}
	}
	if d, err := ztunnelDump(client.Node); err != nil || len(d.TunnelFallbacks) != 0 {
		t.Errorf("the client's ztunnel fell back to HTTP/2 (%v, %v): the HTTP/3 figures are not HTTP/3's", d.TunnelFallbacks, err)
	}
}

// useTunnel labels demo for protocol p and waits until the client's ztunnel holds demo/server
// with it.
func useTunnel(t *testing.T, st *State, client *PodState, p configv1.TunnelProtocol) {
	t.Helper()
	var err error
	if p == configv1.TunnelProtocol_HBONE_H3 {
		_, err = configdir.SetNamespaceLabel(st.ConfigDir, "demo", tunnelLabel, "hbone-h3")
	} else {
		_, err = configdir.RemoveNamespaceLabel(st.ConfigDir, "demo", tunnelLabel)
	}
	if err != nil {
		t.Fatal(err)
	}
	wait.Until(t, settle, fmt.Sprintf("demo/server as %v", p), func() error {
		if got, err := tunnelOf(client.Node, "demo", "server"); err != nil || got != p {
			return fmt.Errorf("demo/server is %v, %v", got, err)
		}
		return nil
	})
}

// streams runs n keep-alive connections from pod to url, each making calls requests one after
// another once all are open, and returns every call's latency; any failed call is an error.
func streams(from *PodState, url string, n, calls int) ([]time.Duration, error) {
	var (
		mu    sync.Mutex
		all   []time.Duration
		errs  []error
		wg    sync.WaitGroup
		ready sync.WaitGroup
	)
	ready.Add(n)
	for range n {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return DialIn(from.NetNS, addr, 15*time.Second)
			}}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr, Timeout: 15 * time.Second}
			// Call 0 opens the connection, and with it the tunnel's stream (a CONNECT and
			// its 200, one round trip); it is not measured, and the measured calls start
			// once every connection is open: n streams over the tunnel, calls on each.
			for i := range calls + 1 {
				if i == 1 {
					ready.Done()
					ready.Wait()
				}
				start := time.Now()
				resp, err := hc.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("%s", resp.Status)
					}
				}
				d := time.Since(start)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if i > 0 {
					all = append(all, d)
				}
				mu.Unlock()
				if err != nil && i == 0 {
					ready.Done()
					return
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("%d of %d calls failed, first: %v", len(errs), n*(calls+1), errs[0])
	}
	return all, nil
}
