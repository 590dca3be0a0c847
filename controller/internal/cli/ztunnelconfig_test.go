package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"ambit.dev/proto/nodeapi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	sigsyaml "sigs.k8s.io/yaml"

	"ambit.dev/controller/lab"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func pj(t testing.TB, msgs ...proto.Message) []json.RawMessage {
	t.Helper()
	out := []json.RawMessage{}
	for _, m := range msgs {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// sampleDump is a ztunnel /config_dump, built from the contract's types as ztunnel builds it.
func sampleDump(t testing.TB) []byte {
	t.Helper()
	svcKey := "demo/server.demo.svc.cluster.local"
	wpAddr := &configv1.NetworkAddress{Address: ip("10.10.3.5")}
	notAfter := time.Date(2026, 11, 24, 14, 0, 0, 0, time.UTC)
	sections := dump.Sections{
		Workloads: pj(t,
			&configv1.Workload{Uid: "u2", Name: "server", Namespace: "demo", Node: "node-b", Addresses: [][]byte{ip("10.10.2.2")},
				ServiceAccount: "server", TunnelProtocol: configv1.TunnelProtocol_HBONE,
				Services: map[string]*configv1.PortList{svcKey: {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}}},
				Waypoint: &configv1.GatewayAddress{Address: wpAddr, HbonePort: 15008}},
			&configv1.Workload{Uid: "u1", Name: "client", Namespace: "demo", Node: "node-a", Addresses: [][]byte{ip("10.10.1.2")},
				ServiceAccount: "client", TunnelProtocol: configv1.TunnelProtocol_HBONE, Labels: map[string]string{"address": "AAAAAA=="}},
			&configv1.Workload{Uid: "u3", Name: "legacy", Namespace: "other", Node: "node-a", Addresses: [][]byte{ip("10.10.1.9"), ip("fd00::9")},
				ServiceAccount: "default", TrustDomain: "example.org",
				Services: map[string]*configv1.PortList{svcKey: {}},
				Waypoint: &configv1.GatewayAddress{Address: &configv1.NetworkAddress{Address: ip("10.10.9.9")}}},
		),
		Services: pj(t,
			&configv1.Service{Name: "server", Namespace: "demo", Hostname: "server.demo.svc.cluster.local",
				Addresses: []*configv1.NetworkAddress{{Address: ip("10.96.0.10")}},
				Ports:     []*configv1.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: configv1.AppProtocol_HTTP}, {ServicePort: 9000}}},
			&configv1.Service{Name: "idle", Namespace: "other", Hostname: "idle.other.svc.cluster.local"},
		),
		Policies: pj(t,
			&configv1.Authorization{Name: "allow-client", Namespace: "demo", Action: configv1.Authorization_ALLOW,
				Rules: []*configv1.Rule{{From: []*configv1.Source{{Principals: []string{"cluster.local/ns/demo/sa/client"}}}}}},
			&configv1.Authorization{Name: "deny-all", Namespace: "ambit-system", Action: configv1.Authorization_DENY, Scope: configv1.Authorization_GLOBAL},
		),
		Waypoints: pj(t,
			&configv1.Waypoint{Name: "waypoint", Namespace: "demo", Address: wpAddr, HbonePort: 15008, Identity: "spiffe://cluster.local/ns/demo/sa/waypoint"},
		),
	}
	d := dump.Ztunnel{
		Sections: sections,
		Certificates: []dump.CertInfo{
			{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server"), Serial: "ab12", NotBefore: notAfter.Add(-24 * time.Hour),
				NotAfter: notAfter, NextFetch: notAfter.Add(-12 * time.Hour), State: dump.StateValid, Issuer: "CN=mesh intermediate 2"},
			{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client"), State: dump.StateFailed, LastError: "permission denied"},
		},
		Pods: []nodeapi.PodStatus{
			{Registration: nodeapi.Registration{UID: "u1", Namespace: "demo", Name: "client", NetNS: "/var/run/netns/client"}, Captured: true},
			{Registration: nodeapi.Registration{UID: "u4", Namespace: "demo", Name: "off", NetNS: "/var/run/netns/off"}, Reason: "not enrolled"},
		},
		TrustBundle: []dump.Root{
			{Subject: "O=ambit,CN=ambit root ca cluster.local", Fingerprint: "8c1f0a2b3c4d5e6f", NotAfter: time.Date(2036, 11, 24, 14, 0, 0, 0, time.UTC)},
			{Subject: "CN=Example Root CA 2", Fingerprint: "1a2b3c4d5e6f7081", NotAfter: time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC)},
		},
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ztunnelAdmin serves body as /config_dump, like ztunnel's admin port.
func ztunnelAdmin(t *testing.T, body []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/config_dump" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestZtunnelConfigTables(t *testing.T) {
	addr := ztunnelAdmin(t, sampleDump(t))
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"workloads"}, `
NAMESPACE   NAME     IP                  NODE     IDENTITY                                   PROTOCOL   WAYPOINT
demo        client   10.10.1.2           node-a   spiffe://cluster.local/ns/demo/sa/client   HBONE      None
demo        server   10.10.2.2           node-b   spiffe://cluster.local/ns/demo/sa/server   HBONE      demo/waypoint
other       legacy   10.10.1.9,fd00::9   node-a   spiffe://example.org/ns/other/sa/default   TCP        10.10.9.9
`},
		{[]string{"workloads", "-n", "other"}, `
NAMESPACE   NAME     IP                  NODE     IDENTITY                                   PROTOCOL   WAYPOINT
other       legacy   10.10.1.9,fd00::9   node-a   spiffe://example.org/ns/other/sa/default   TCP        10.10.9.9
`},
		{[]string{"services"}, `
NAMESPACE   NAME     VIP          PORTS                   ENDPOINTS
demo        server   10.96.0.10   80:8080/HTTP,9000/TCP   2
other       idle     -            -                       0
`},
		{[]string{"policies"}, `
NAMESPACE      NAME           ACTION   SCOPE               RULES
ambit-system   deny-all       DENY     GLOBAL              0
demo           allow-client   ALLOW    WORKLOAD_SELECTOR   1
`},
		{[]string{"certificates"}, `
IDENTITY                                   SERIAL   NOT-AFTER              STATE    NEXT-FETCH             ISSUER                   LAST-ERROR
spiffe://cluster.local/ns/demo/sa/client   -        -                      failed   -                      -                        permission denied
spiffe://cluster.local/ns/demo/sa/server   ab12     2026-11-24T14:00:00Z   valid    2026-11-24T02:00:00Z   CN=mesh intermediate 2   -
`},
		{[]string{"roots"}, `
FINGERPRINT        NOT-AFTER              SUBJECT
8c1f0a2b3c4d5e6f   2036-11-24T14:00:00Z   O=ambit,CN=ambit root ca cluster.local
1a2b3c4d5e6f7081   2035-01-01T00:00:00Z   CN=Example Root CA 2
`},
		{[]string{"waypoints"}, `
NAMESPACE   NAME       FOR              ADDRESS           IDENTITY
demo        waypoint   serviceaccount   10.10.3.5:15008   spiffe://cluster.local/ns/demo/sa/waypoint
`},
		{[]string{"pods"}, `
NAMESPACE   NAME     UID   NETNS                   CAPTURED   REASON
demo        client   u1    /var/run/netns/client   true       -
demo        off      u4    /var/run/netns/off      false      not enrolled
`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := run(t, Options{}, append([]string{"ztunnel-config"}, append(tt.args, "--admin-addr", addr)...)...)
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.TrimPrefix(tt.want, "\n"); out != want {
				t.Fatalf("got:\n%s\nwant:\n%s", out, want)
			}
		})
	}
}

func TestZtunnelConfigJSONYAML(t *testing.T) {
	addr := ztunnelAdmin(t, sampleDump(t))
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			out, err := run(t, Options{}, "zc", "workloads", "-n", "demo", "-o", format, "--admin-addr", addr)
			if err != nil {
				t.Fatal(err)
			}
			b := []byte(out)
			if format == "yaml" {
				if strings.HasPrefix(out, "[") || !strings.Contains(out, "- addresses:\n  - 10.10.1.2\n") {
					t.Fatalf("not block YAML:\n%s", out)
				}
				if b, err = sigsyaml.YAMLToJSON(b); err != nil {
					t.Fatal(err)
				}
			}
			var got []map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if len(got) != 2 {
				t.Fatalf("%d workloads, want the 2 of demo:\n%s", len(got), out)
			}
			// The entries are ztunnel's protojson, with IPs readable and user data untouched.
			server := got[0]
			if server["name"] != "server" || server["tunnelProtocol"] != "HBONE" || server["serviceAccount"] != "server" {
				t.Fatalf("server: %v", server)
			}
			if a := server["addresses"].([]any); len(a) != 1 || a[0] != "10.10.2.2" {
				t.Fatalf("addresses %v", a)
			}
			if wp := server["waypoint"].(map[string]any)["address"].(map[string]any)["address"]; wp != "10.10.3.5" {
				t.Fatalf("waypoint address %v", wp)
			}
			if l := got[1]["labels"].(map[string]any)["address"]; l != "AAAAAA==" {
				t.Fatalf("label rewritten: %v", l)
			}
		})
	}
	// Certificates have camelCase keys, like every JSON the CLI prints (the dump's are
	// snake_case), in ztunnel's order, keys sorted as in every section; empty fields are left out as in the dump.
	out, err := run(t, Options{}, "zc", "certificates", "-o", "json", "--admin-addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	wantCerts := `[
  {
    "id": "spiffe://cluster.local/ns/demo/sa/server",
    "issuer": "CN=mesh intermediate 2",
    "nextFetch": "2026-11-24T02:00:00Z",
    "notAfter": "2026-11-24T14:00:00Z",
    "notBefore": "2026-11-23T14:00:00Z",
    "serial": "ab12",
    "state": "valid"
  },
  {
    "id": "spiffe://cluster.local/ns/demo/sa/client",
    "lastError": "permission denied",
    "state": "failed"
  }
]
`
	if out != wantCerts {
		t.Fatalf("certificates -o json:\n%s\nwant:\n%s", out, wantCerts)
	}
	out, err = run(t, Options{}, "zc", "certificates", "-o", "yaml", "--admin-addr", addr)
	if err != nil || !strings.Contains(out, "\n  notAfter: \"2026-11-24T14:00:00Z\"\n") || !strings.Contains(out, "\n  lastError: permission denied\n") {
		t.Fatalf("certificates -o yaml: %v\n%s", err, out)
	}
	// Pods are printed as ztunnel wrote them (nodeapi.PodStatus), filtered by namespace.
	out, err = run(t, Options{}, "zc", "pods", "-n", "demo", "-o", "json", "--admin-addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	var pods []map[string]any
	if err := json.Unmarshal([]byte(out), &pods); err != nil || len(pods) != 2 ||
		fmt.Sprint(pods[0]) != "map[captured:true name:client namespace:demo netns:/var/run/netns/client uid:u1]" ||
		fmt.Sprint(pods[1]) != "map[captured:false name:off namespace:demo netns:/var/run/netns/off reason:not enrolled uid:u4]" {
		t.Fatalf("pods: %v\n%s", err, out)
	}
	// An empty section is an empty list, not null.
	empty := ztunnelAdmin(t, []byte(`{"workloads":[],"services":[],"policies":[],"waypoints":[],"certificates":[],"pods":[]}`))
	out, err = run(t, Options{}, "zc", "policies", "-o", "json", "--admin-addr", empty)
	if err != nil || out != "[]\n" {
		t.Fatalf("empty: %q %v", out, err)
	}
}

func TestZtunnelConfigNode(t *testing.T) {
	addr := ztunnelAdmin(t, sampleDump(t))
	labDir := fakeLab(t, lab.State{Name: "test-lab", Nodes: []lab.NodeState{{Name: "node-a", AdminAddr: addr}, {Name: "node-b", AdminAddr: freeAddr(t)}}})

	out, err := run(t, Options{}, "ztunnel-config", "services", "--node", "node-a", "--lab-dir", labDir)
	if err != nil || !strings.Contains(out, "demo        server   10.96.0.10") {
		t.Fatalf("--node node-a: %q %v", out, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node", "node-c", "--lab-dir", labDir}, `lab "test-lab" has no node "node-c" (nodes: [node-a node-b])`},
		{[]string{"--node", "node-b", "--lab-dir", labDir}, `connection refused — is the ztunnel of lab node "node-b" running? see ` + "`ambitctl lab status`"},
		{[]string{"--node", "node-a", "--lab-dir", t.TempDir()}, "no lab is up"},
		{[]string{"--node", "node-a", "--lab-dir", labDir, "--admin-addr", addr}, "mutually exclusive"},
	} {
		_, err := run(t, Options{}, append([]string{"ztunnel-config", "workloads"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestZtunnelConfigErrors(t *testing.T) {
	closed := freeAddr(t)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "state not loaded", http.StatusInternalServerError)
	}))
	defer broken.Close()
	badEntry := ztunnelAdmin(t, []byte(`{"workloads":[{"name": 7}]}`))
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()

	for _, tc := range []struct {
		o    Options
		args []string
		want string
	}{
		{Options{}, []string{"workloads", "--admin-addr", closed},
			"cannot reach ztunnel admin at " + closed + ": connection refused — is ztunnel running? for the lab use --node"},
		{Options{}, []string{"workloads", "--admin-addr", strings.TrimPrefix(broken.URL, "http://")},
			"answered GET /config_dump with 500 Internal Server Error: state not loaded"},
		{Options{}, []string{"workloads", "--admin-addr", badEntry}, "config_dump: workload 0: "},
		{Options{HTTP: &http.Client{Timeout: 100 * time.Millisecond}}, []string{"pods", "--admin-addr", strings.TrimPrefix(slow.URL, "http://")}, ": timed out — is ztunnel running?"},
		{Options{}, []string{"nonsense"}, `unknown command "nonsense" for "ambitctl ztunnel-config": want one of certificates, pods, policies, roots, services, waypoints, workloads`},
	} {
		_, err := run(t, tc.o, append([]string{"ztunnel-config"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// TestHelpHasExamples: every command documents itself with examples; a bare group command
// prints its help.
func TestHelpHasExamples(t *testing.T) {
	for _, args := range [][]string{
		{"namespace"}, {"namespace", "enable"}, {"namespace", "disable"}, {"proxy-status"}, {"ztunnel-config"},
		{"ztunnel-config", "workloads"}, {"ztunnel-config", "services"}, {"ztunnel-config", "policies"}, {"ztunnel-config", "certificates"},
		{"ztunnel-config", "roots"},
	} {
		out, err := run(t, Options{}, append(args, "--help")...)
		if err != nil || !strings.Contains(out, "Examples:") || !strings.Contains(out, "  ambitctl "+args[0]) {
			t.Errorf("%v --help: %v\n%s", args, err, out)
		}
	}
	out, err := run(t, Options{}, "namespace")
	if err != nil || !strings.Contains(out, "Available Commands:") || !strings.Contains(out, "disable") {
		t.Errorf("bare namespace: %v\n%s", err, out)
	}
}

// FuzzConfigDump: whatever a ztunnel (or something else on its port) answers, every section
// prints or fails with an error; nothing panics.
func FuzzConfigDump(f *testing.F) {
	f.Add(sampleDump(f))
	f.Add([]byte(`{"workloads":[{"addresses":["AAAA"],"waypoint":{"address":{}}}],"services":[{"ports":[{}]}]}`))
	f.Add([]byte(`{"certificates":[{"id":7}],"pods":[null]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var d dump.Ztunnel
		if json.Unmarshal(body, &d) != nil {
			return
		}
		for _, s := range sections {
			_ = s.print(io.Discard, &d, filter{})
			_ = s.print(io.Discard, &d, filter{namespace: "demo"})
			raw, err := s.raw(&d)
			if err != nil {
				continue
			}
			for _, format := range []string{outJSON, outYAML} {
				_ = printSection(io.Discard, format, raw, filter{namespace: "demo"})
			}
		}
	})
}
