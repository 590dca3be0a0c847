package harness

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"ambit.dev/bench/internal/peer"
	"ambit.dev/bench/internal/report"
	"ambit.dev/mesh/e2elock"
	"ambit.dev/mesh/gobuild"
)

func TestConfigValidate(t *testing.T) {
	ok := Quick()
	ok.BinDir, ok.Self = "/bin", "/bin/bench"
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no qps":           func(c *Config) { c.QPS = 0 },
		"no connections":   func(c *Config) { c.Connections = nil },
		"no duration":      func(c *Config) { c.Duration = 0 },
		"unknown scenario": func(c *Config) { c.Scenarios = []string{"istio"} },
		"no self":          func(c *Config) { c.Self = "" },
		"falling rates":    func(c *Config) { c.Capacity.Rates = []float64{2000, 1000} },
		"zero rate":        func(c *Config) { c.Capacity.Rates = []float64{0, 1000} },
		"no sweep conns":   func(c *Config) { c.Capacity.Connections = 0 },
		"no step":          func(c *Config) { c.Capacity.Step = 0 },
		"no tries":         func(c *Config) { c.Capacity.Tries = 0 },
		"repeated level":   func(c *Config) { c.Idle.Levels = []int{1, 1} },
		"too many tunnels": func(c *Config) { c.Idle.Levels = []int{1, 19000} },
		"idle scenario":    func(c *Config) { c.Idle.Scenarios = []string{"istio"} },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPerfReport(t *testing.T) {
	out := "# Samples: 1K\n#\n# Overhead  Symbol\n    12.50%  [k] _raw_spin_unlock_irqrestore\n     3.10%  [.] runtime.mallocgc\n" +
		"     2.00%  [.] crypto/internal/fips140/aes/gcm.gcmAesEnc\n     1.00%  [.] golang.org/x/net/http2.(*Framer).ReadFrame\n" +
		"    81.70%  [kernel.kallsyms]\n     0.50%  [.] runtime.findRunnable                     -      -   \n     0.40%  [.] main.main\n\n"
	syms := parseReport([]byte(out))
	if len(syms) != 7 || !syms[0].kernel || syms[0].name != "_raw_spin_unlock_irqrestore" || syms[1].kernel || syms[1].name != "runtime.mallocgc" {
		t.Fatalf("%+v", syms)
	}
	got := categorize(syms)
	want := []float64{12.5, 2, 3.1, 0.5, 1, 82.1} // a dso line counts as a symbol
	for i := range want {
		if got[i] < want[i]-1e-9 || got[i] > want[i]+1e-9 {
			t.Fatalf("categories %v, want %v", got, want)
		}
	}
}

// TestMergeSymbols: perf lists a symbol once per binary that ran it (each node its own copy
// of ztunnel); the report shows it once, with the sum.
func TestMergeSymbols(t *testing.T) {
	out := "    29.01%  [.] crypto/internal/fips140/sha256.blockSHANI.abi0   -  -\n     1.70%  [.] runtime.findfunc\n" +
		"    18.43%  [.] crypto/internal/fips140/sha256.blockSHANI.abi0   -  -\n     1.37%  [.] runtime.mallocgc\n     0.40%  [.] runtime.findfunc\n"
	got := mergeSymbols(parseReport([]byte(out)))
	want := []symbol{{pct: 47.44, name: "crypto/internal/fips140/sha256.blockSHANI.abi0"}, {pct: 2.1, name: "runtime.findfunc"}, {pct: 1.37, name: "runtime.mallocgc"}}
	if len(got) != len(want) {
		t.Fatalf("%+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].name != want[i].name || got[i].pct < want[i].pct-1e-9 || got[i].pct > want[i].pct+1e-9 {
			t.Fatalf("%+v, want %+v", got, want)
		}
	}
}

// TestSmokeLab runs a tiny benchmark through the real lab: every scenario that exists, one
// connection, a second each. It needs root, like the lab; its lab has its own prefix,
// ports and subnet, so a `make bench` or a developer's lab may run beside it.
func TestSmokeLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the lab creates network namespaces, links and iptables rules")
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy is not installed (make setup)")
	}
	// Alone on the machine, as the lab's own e2e tests are: a test cluster or another lab
	// beside it starves its processes of the two cores (a ztunnel once missed its 20 s start).
	release, err := e2elock.Exclusive()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := gobuild.Build("", bin+"/", nil, "ambit.dev/controller/cmd/controller", "ambit.dev/controller/cmd/ambitctl",
		"ambit.dev/ztunnel/cmd/ztunnel", "ambit.dev/waypoint/cmd/waypoint", "ambit.dev/bench/cmd/bench"); err != nil {
		t.Fatal(err)
	}
	// the istio-go-hbone peer, from compat/istio (a module outside go.work), as hack/bench.sh builds it
	if err := peer.BuildIstioPeer("../../../compat/istio", bin); err != nil {
		t.Fatal(err)
	}
	objects, err := filepath.Abs("../../lab")
	if err != nil {
		t.Fatal(err)
	}
	topo := filepath.Join(dir, "lab.yaml")
	b, err := os.ReadFile("../../lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(strings.Replace(string(b), "subnet: 10.79.0.0/16", "subnet: 10.81.0.0/16", 1), "config: lab", "config: "+objects, 1)
	if err := os.WriteFile(topo, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Topology: topo, LabDir: filepath.Join(dir, "lab"), LabPrefix: "ambitbt", LabPortBase: 29000, // below the ephemeral range (32768+), where outgoing connections could take a port
		BinDir: bin, Self: filepath.Join(bin, "bench"), ResultsDir: filepath.Join(dir, "results"),
		Rounds: 1, QPS: 200, Connections: []int{1}, Duration: time.Second, BulkDuration: time.Second, ChurnDuration: time.Second,
		ChurnConnections: 2, Out: testWriter{t},
		// a rate low enough that every scenario should hold it on a busy machine, and steps
		// long enough (100 calls a connection) that the achieved rate is not cut short by
		// the run's last call (0.5 s at 25 calls a connection achieved 94%)
		Capacity: CapacitySweep{Rates: []float64{200, 400}, Connections: 2, Step: time.Second, Tries: 2},
		Idle:     IdleSweep{Scenarios: []string{report.AmbitL4, report.AmbitL4H3}, Levels: []int{1, 50}, Settle: 200 * time.Millisecond}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rows, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var scen []string
	for _, r := range rows {
		scen = append(scen, r.Scenario)
		if r.QPS < 150 || r.Errors != 0 || r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.P999 || r.ThroughputGbps <= 0 || r.ConnPerSec <= 0 {
			t.Errorf("implausible row %+v", r)
		}
		proxied := r.Scenario != report.Direct
		if proxied != (r.CPUPer1k > 0 && r.RSSMB > 0) {
			t.Errorf("proxy usage of %s: %v vCPU/1k, %v MB", r.Scenario, r.CPUPer1k, r.RSSMB)
		}
		waypoint := r.Scenario == report.AmbitL7
		if waypoint != (r.WaypointCPUPer1k > 0 && r.WaypointRSSMB > 0) || r.WaypointCPUPer1k > r.CPUPer1k {
			t.Errorf("waypoint usage of %s: %v vCPU/1k, %v MB (all proxies %v)", r.Scenario, r.WaypointCPUPer1k, r.WaypointRSSMB, r.CPUPer1k)
		}
	}
	if strings.Join(scen, ",") != "direct,ambit-l4,ambit-l4-h3,ambit-l7,istio-go-hbone,haproxy-mtls,nginx-mtls,stunnel-mtls" {
		t.Errorf("scenarios %v", scen)
	}
	var fromFile []report.Row
	js, err := os.ReadFile(filepath.Join(cfg.ResultsDir, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &fromFile); err != nil || len(fromFile) != len(rows) {
		t.Fatalf("latest.json: %v, %d rows", err, len(fromFile))
	}
	for _, f := range []string{"latency.png", "capacity.png", "idle.png"} {
		if _, err := os.Stat(filepath.Join(cfg.ResultsDir, f)); err != nil {
			t.Error(err)
		}
	}
	var sw report.Sweeps
	js, err = os.ReadFile(filepath.Join(cfg.ResultsDir, "sweeps.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &sw); err != nil {
		t.Fatalf("sweeps.json: %v", err)
	}
	for _, name := range scen {
		first := slices.IndexFunc(sw.Capacity, func(s report.Step) bool { return s.Scenario == name })
		if first < 0 {
			t.Errorf("%s: no capacity step", name)
			continue
		}
		s := sw.Capacity[first]
		if s.OfferedQPS != 200 || s.Connections != 2 || s.QPS <= 0 || s.P50 <= 0 || s.P99 < s.P50 {
			t.Errorf("%s: implausible first capacity step %+v", name, s)
		}
		if !s.Held {
			t.Logf("%s did not hold 200 req/s (a busy machine?): %+v", name, s)
		}
	}
	// a retry follows a try of its rate that was not held, and the sweep of a scenario ends
	// at its first rate whose last try was not held
	for i, s := range sw.Capacity {
		if s.Retry && (i == 0 || sw.Capacity[i-1].Held || sw.Capacity[i-1].Scenario != s.Scenario || sw.Capacity[i-1].OfferedQPS != s.OfferedQPS || sw.Capacity[i-1].Retry) {
			t.Errorf("step %d is a retry of no failed try: %+v", i, s)
		}
		next := report.Step{}
		if i+1 < len(sw.Capacity) {
			next = sw.Capacity[i+1]
		}
		if !s.Held && next.Scenario == s.Scenario && !(next.Retry && next.OfferedQPS == s.OfferedQPS && !s.Retry) {
			t.Errorf("step %d not held, and the sweep went on to %+v", i, next)
		}
	}
	for _, name := range []string{report.AmbitL4, report.AmbitL4H3} {
		var levels []int
		for _, r := range sw.Idle {
			if r.Scenario != name {
				continue
			}
			levels = append(levels, r.Tunnels)
			// every tunnel opened end to end (a byte echoed), and the ztunnels read
			if r.Held != r.Tunnels || r.Errors != 0 || r.ClientRSSKB <= 0 || r.ServerRSSKB <= 0 || r.ClientBaseKB <= 0 || r.ServerBaseKB <= 0 {
				t.Errorf("%s: idle row %+v", name, r)
			}
		}
		if !slices.Equal(levels, []int{1, 50}) {
			t.Errorf("%s: idle levels %v, want 1 and 50", name, levels)
		}
	}
	for _, r := range rows {
		if c, _, _ := report.Capacity(sw.Capacity, r.Scenario); r.CapacityQPS != c {
			t.Errorf("%s: row capacity %v, sweep %v", r.Scenario, r.CapacityQPS, c)
		}
	}
	if _, err := os.Stat(cfg.LabDir); !os.IsNotExist(err) {
		t.Errorf("lab dir left behind: %v", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestGoMemStats reads a real heap profile, this test binary's own, the way the harness
// reads a ztunnel's.
func TestGoMemStats(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/heap", pprof.Index)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	m, err := goMemStats(context.Background(), strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if m["Sys"] == 0 || m["HeapInuse"] == 0 || m["StackInuse"] == 0 || m["Sys"] > ms.Sys*2 || m["HeapInuse"] > m["Sys"] {
		t.Fatalf("parsed MemStats %v do not look like this process's (Sys %d)", m, ms.Sys)
	}
	if _, err := parseMemStats(strings.NewReader("heap profile: 0: 0 [0: 0] @ heap/1048576\n")); err == nil {
		t.Fatal("a profile without MemStats parsed")
	}
}
