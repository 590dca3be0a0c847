package localconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ambit.dev/mesh/state"
	"ambit.dev/mesh/wait"
	configv1 "ambit.dev/proto/config/v1"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The example the docs point at parses.
func TestExampleFile(t *testing.T) {
	b, err := os.ReadFile("../../../examples/ztunnel-local.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	st := state.New()
	for _, tu := range configv1.TypeURLs {
		if err := st.Apply(tu, cfg.Resources[tu], nil); err != nil {
			t.Fatal(err)
		}
	}
	srv, ok := st.Workload(netip.MustParseAddr("10.77.2.2"))
	if !ok || srv.GetUid() != "server" || srv.GetTunnelProtocol() != configv1.TunnelProtocol_HBONE {
		t.Fatalf("server workload = %v", srv)
	}
	if got := st.Policies(srv); len(got) != 1 || got[0].GetName() != "server-allow-client" {
		t.Fatalf("server policies = %v", got)
	}
	blocks := st.Policies(srv)[0].GetRules()[0].GetFrom()[1].GetIpBlocks()
	if len(blocks) != 1 || netip.AddrFrom4([4]byte(blocks[0].GetAddress())).String() != "10.77.0.0" || blocks[0].GetLength() != 16 {
		t.Fatalf("ip block = %v", blocks)
	}
	svc, ok := st.Service(netip.MustParseAddr("10.96.0.10"))
	if !ok || svc.GetHostname() != "server.demo.svc.cluster.local" {
		t.Fatalf("service = %v", svc)
	}
	if eps := st.Endpoints(svc, 80); len(eps) != 1 || eps[0].Addr.String() != "10.77.2.2:8080" {
		t.Fatalf("endpoints = %v", eps)
	}
	if _, ok := st.Waypoint("demo/waypoint"); !ok {
		t.Fatal("waypoint missing")
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	for _, tt := range []struct {
		name, doc, want string
	}{
		{"no version", "workloads: []", `version: ""`},
		{"unknown top-level field", "version: v1\nworkload: []", `unknown field "workload"`},
		{"bad address", "version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.300]}", `workloads[0].addresses[0]: "10.0.0.300" is not an IP address`},
		{"unknown workload field", "version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1], serviceaccount: x}", `workloads[0]: unknown field "serviceaccount"`},
		{"bad enum", "version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1], tunnelProtocol: HBONE2}", `workloads[0]: invalid value for enum field tunnelProtocol`},
		{"no address", "version: v1\nworkloads:\n- {name: a, namespace: n}", `workloads[0].addresses: a workload needs`},
		{"bad VIP", "version: v1\nservices:\n- {name: s, namespace: n, addresses: [{address: nope}]}", `services[0].addresses[0].address: "nope" is not an IP address`},
		{"bad CIDR", "version: v1\npolicies:\n- {name: p, namespace: n, rules: [{from: [{ipBlocks: [10.0.0.0/40]}]}]}", `policies[0].rules[0].from[0].ipBlocks[0]: "10.0.0.0/40" is not a CIDR block`},
		{"unknown policy", "version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1], authorizationPolicies: [n/x]}", `workloads[0].authorizationPolicies[0]: no policy "n/x"`},
		{"unknown service", "version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1], services: {n/web: {ports: [{servicePort: 80}]}}}", `workloads[0].services: no service "n/web"`},
		{"duplicate", "version: v1\nworkloads:\n- {uid: a, name: a, namespace: n, addresses: [10.0.0.1]}\n- {uid: a, name: b, namespace: n, addresses: [10.0.0.2]}", `workloads[1]: a second resource named "a"`},
		{"bad waypoint", "version: v1\nwaypoints:\n- {name: w, namespace: n, address: 300.1.1.1}", `waypoints[0].address: "300.1.1.1" is not an IP address`},
		{"yaml syntax", "version: v1\nworkloads: [", "parse:"},
		{"mesh mode", "version: v1\npeerAuthentication: strict", `peerAuthentication: "strict"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseSnakeCaseAndDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`{"version": "v1", "workloads": [{"name": "a", "namespace": "n", "addresses": ["fd00::1"], "service_account": "sa", "tunnel_protocol": "NONE",
		"waypoint": {"address": "10.0.0.9", "identity": "spiffe://cluster.local/ns/n/sa/wp"}}],
		"policies": [{"name": "p", "namespace": "n", "rules": [{"from": [{"not_ip_blocks": ["10.1.2.3"]}]}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Resources[configv1.WorkloadTypeURL]["n/a"].(*configv1.Workload)
	if w.GetServiceAccount() != "sa" || w.GetTunnelProtocol() != configv1.TunnelProtocol_NONE || len(w.GetAddresses()[0]) != 16 {
		t.Fatalf("workload = %v", w)
	}
	if a, _ := netip.AddrFromSlice(w.GetWaypoint().GetAddress().GetAddress()); a.String() != "10.0.0.9" {
		t.Fatalf("waypoint address = %v", a)
	}
	b := cfg.Resources[configv1.AuthorizationTypeURL]["n/p"].(*configv1.Authorization).GetRules()[0].GetFrom()[0].GetNotIpBlocks()[0]
	if b.GetLength() != 32 {
		t.Fatalf("single address block length = %d", b.GetLength())
	}
}

type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.msgs = append(l.msgs, s)
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// A change to the file is applied; a bad one is logged once with its field and the last
// good config stays; removals take resources out.
func TestSourceFollowsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1]}\n- {name: b, namespace: n, addresses: [10.0.0.2]}\n")
	l := &logs{}
	st := state.New()
	s := &Source{Path: path, State: st, Logger: slog.New(l), Interval: 20 * time.Millisecond}
	if err := s.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	has := func(ip string) bool { _, ok := st.Workload(netip.MustParseAddr(ip)); return ok }
	// logged waits for exactly one message starting with prefix.
	logged := func(prefix string) {
		t.Helper()
		wait.Until(t, 5*time.Second, fmt.Sprintf("%q logged once", prefix), func() error {
			if n := l.count(prefix); n != 1 {
				return fmt.Errorf("logged %d times", n)
			}
			return nil
		})
	}
	if !has("10.0.0.1") || !has("10.0.0.2") {
		t.Fatal("initial config not applied")
	}

	write("version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1]}\n- {name: b, namespace: n, addresses: [10.0.0.2], tunnelProtocl: HBONE}\n")
	logged("local config rejected")
	time.Sleep(100 * time.Millisecond) // several more polls of the same bad file
	if n := l.count("local config rejected"); n != 1 {
		t.Fatalf("bad file reported %d times, want once", n)
	}
	l.mu.Lock()
	var msg string
	for _, m := range l.msgs {
		if strings.HasPrefix(m, "local config rejected") {
			msg = m
		}
	}
	l.mu.Unlock()
	if !strings.Contains(msg, `workloads[1]: unknown field "tunnelProtocl"`) {
		t.Fatalf("rejection does not name the field: %s", msg)
	}
	if !has("10.0.0.1") || !has("10.0.0.2") {
		t.Fatal("last good config not kept")
	}

	write("version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1]}\n")
	wait.Until(t, 5*time.Second, "workload b removed", func() error {
		if has("10.0.0.2") {
			return errors.New("still there")
		}
		return nil
	})
	if !has("10.0.0.1") {
		t.Fatal("workload a lost")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	logged("local config unreadable")
	if !has("10.0.0.1") {
		t.Fatal("config dropped with its file")
	}
}

// FuzzParse: whatever the file holds, Parse returns a config that the proxy's state takes,
// or an error; it never panics.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../../examples/ztunnel-local.yaml"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		"version: v1\nworkloads:\n- {name: a, namespace: n, addresses: [10.0.0.1, \"fd00::1\"], waypoint: {address: 10.0.0.9}}",
		"version: v1\nservices:\n- {name: s, namespace: n, addresses: [10.96.0.1, {address: 10.96.0.2}], ports: [{servicePort: 80}]}",
		"version: v1\npolicies:\n- {name: p, namespace: n, selector: {app: a}, rules: [{from: [{ipBlocks: [10.0.0.0/8, {address: 10.1.0.0, length: 16}]}]}]}",
		`{"version": "v1", "waypoints": [{"name": "w", "namespace": "n", "address": {"address": "10.0.0.9"}}]}`,
		"version: v1\nworkloads: [{addresses: {}}]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := Parse(b)
		if err != nil {
			return
		}
		st := state.New()
		for _, tu := range configv1.TypeURLs {
			if err := st.Apply(tu, cfg.Resources[tu], nil); err != nil {
				t.Fatalf("parsed config rejected by the state: %v", err)
			}
		}
	})
}
