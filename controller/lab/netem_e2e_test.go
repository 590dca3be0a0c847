package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"ambit.dev/controller/lab/netem"
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
	var failed []string
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
			if resp.StatusCode != 200 || !e.MTLS {
				return fmt.Errorf("%s, mTLS %v", resp.Status, e.MTLS)
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
	// one round trip across the bridge at least: the impairment was on the mesh's path
	if pct(0.5) < 20*time.Millisecond {
		t.Errorf("median call %v: the bridge's delay did not apply", pct(0.5))
	}
	if stats.Dropped == 0 {
		t.Errorf("no packet dropped of %d at 1%% loss", stats.Seen)
	}
}
