package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"ambit.dev/controller/lab"
)

// TestLabCommands: the lab commands and their flags, all of them, so that none is lost.
func TestLabCommands(t *testing.T) {
	root := &cobra.Command{Use: "ambitctl"}
	AddCommands(root, Options{})
	labCmd, _, err := root.Find([]string{"lab"})
	if err != nil || labCmd.Name() != "lab" {
		t.Fatalf("no lab command: %v", err)
	}
	want := map[string][]string{
		"up":              {"bin-dir", "file", "lab-dir", "port-base", "prefix"},
		"down":            {"lab-dir", "prefix"},
		"status":          {"lab-dir", "output"},
		"apply":           {"file", "lab-dir"},
		"delete":          {"file", "lab-dir"},
		"call":            {"count", "lab-dir", "method", "timeout"},
		"wait":            {"lab-dir", "namespace", "released", "timeout"},
		"restart-ztunnel": {"bin-dir", "lab-dir"},
		"serve":           {"kind", "lab-dir", "node-api", "pod", "port"},
		"waypoints-sync":  {"bin-dir", "lab-dir"},
	}
	got := map[string][]string{}
	for _, c := range labCmd.Commands() {
		var flags []string
		c.InheritedFlags().VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name) })
		c.LocalFlags().VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name) })
		slices.Sort(flags)
		got[c.Name()] = flags
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lab commands and flags:\n got %v\nwant %v", got, want)
	}
	for _, name := range []string{"serve", "waypoints-sync"} {
		if c, _, _ := labCmd.Find([]string{name}); !c.Hidden {
			t.Errorf("lab %s is not hidden", name)
		}
	}
}

func TestLabStatus(t *testing.T) {
	s := &lab.Status{
		Name:       "test-lab",
		Controller: lab.ProcStatus{PID: 10, Running: true, Ready: true},
		Nodes:      []lab.NodeStatus{{Name: "node-a", Ztunnel: lab.ProcStatus{PID: 11, Running: true, Detail: "readiness: 503"}}},
		Waypoints:  []lab.WaypointStatus{{Namespace: "demo", Name: "waypoint", Proc: lab.ProcStatus{PID: 12, Detail: "exited"}}},
		Pods: []lab.PodStatus{
			{Namespace: "demo", Name: "client", Node: "node-a", IP: "10.77.1.2", NetNS: true, Captured: true, Apps: "http-echo", AppsUp: true},
			{Namespace: "demo", Name: "server", Node: "node-a", IP: "10.77.1.3", NetNS: true, Reason: "not enrolled", Apps: "http-echo"},
			{Namespace: "other", Name: "gone", Node: "node-a", IP: "10.77.1.4"},
		},
	}
	var out strings.Builder
	if err := printStatus(&out, s, "short"); err != nil {
		t.Fatal(err)
	}
	want := `PROCESS                 PID  STATE
controller              10   ready
ztunnel node-a          11   running, not ready: readiness: 503
waypoint demo/waypoint  12   exited

POD          NODE    IP         MESH              APPS
demo/client  node-a  10.77.1.2  captured          http-echo
demo/server  node-a  10.77.1.3  no: not enrolled  http-echo (down)
other/gone   node-a  10.77.1.4  netns missing     -
`
	if out.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}

	out.Reset()
	if err := printStatus(&out, s, "json"); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatal(err)
	}
	pods := got["pods"].([]any)
	if len(pods) != 3 || pods[0].(map[string]any)["appsUp"] != true || got["controller"].(map[string]any)["pid"] != 10.0 {
		t.Fatalf("json:\n%s", out.String())
	}
	if err := printStatus(&out, s, "xml"); err == nil || err.Error() != `output "xml": want short, json or yaml` {
		t.Fatalf("-o xml: %v", err)
	}

	// No lab: the error says how to start one.
	_, err := run(t, Options{}, "lab", "status", "--lab-dir", noLab(t))
	if err == nil || !strings.Contains(err.Error(), "no lab is up") {
		t.Fatalf("lab status without a lab: %v", err)
	}
}

func TestLabCallTally(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := requests.Add(1)
		switch {
		case n%4 == 0:
			w.WriteHeader(http.StatusForbidden) // the mesh, no pod
		case n%2 == 0:
			w.Header().Set("X-Ambit-Pod", "demo/server-v2")
		default:
			w.Header().Set("X-Ambit-Pod", "demo/server-v1")
		}
	}))
	defer srv.Close()
	do := func() (*http.Response, error) { return http.Get(srv.URL) }
	var out strings.Builder
	if err := tally(&out, 8, do); err != nil {
		t.Fatal(err)
	}
	want := `ANSWERED BY                     STATUS  REQUESTS  SHARE
(no pod: answered by the mesh)  403     2         25.0%
demo/server-v1                  200     4         50.0%
demo/server-v2                  200     2         25.0%
`
	if out.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}

	// A request without an answer is counted, and fails the tally.
	calls := 0
	flaky := func() (*http.Response, error) {
		calls++
		if calls == 2 {
			return nil, fmt.Errorf("connection reset")
		}
		return do()
	}
	out.Reset()
	err := tally(&out, 2, flaky)
	if err == nil || err.Error() != "1 of 2 requests got no answer; the first: connection reset" || !strings.Contains(out.String(), "no answer       -       1         50.0%") {
		t.Fatalf("%v\n%s", err, out.String())
	}
}

// TestHintsNameInvoked: hints name ambitctl as the user ran it, e.g. bin/ambitctl, which is
// what works when ambitctl is not on the PATH.
func TestHintsNameInvoked(t *testing.T) {
	labDir := fakeLab(t, lab.State{Name: "test-lab", DebugAddr: freeAddr(t), Nodes: []lab.NodeState{{Name: "node-a", AdminAddr: freeAddr(t)}}})
	o := Options{Invoked: "bin/ambitctl"}
	for _, args := range [][]string{
		{"ztunnel-config", "workloads", "--node", "node-a", "--lab-dir", labDir},
		{"proxy-status", "--lab", "--lab-dir", labDir},
		{"waypoint", "status", "--lab", "--lab-dir", labDir},
	} {
		_, err := run(t, o, args...)
		if err == nil || !strings.Contains(err.Error(), "see `bin/ambitctl lab status`") {
			t.Errorf("%v: %v, want a hint naming bin/ambitctl", args, err)
		}
	}
	// With no lab up, every command that needs one says how to start it, by the same name.
	none := noLab(t)
	for _, args := range [][]string{
		{"lab", "status", "--lab-dir", none},
		{"lab", "call", "demo/client", "http://10.77.2.2:8080/", "--lab-dir", none},
		{"ztunnel-config", "workloads", "--node", "node-a", "--lab-dir", none},
		{"proxy-status", "--lab", "--lab-dir", none},
		{"namespace", "enable", "demo", "--lab", "--lab-dir", none},
		{"waypoint", "status", "--lab", "--lab-dir", none},
	} {
		_, err := run(t, o, args...)
		if err == nil || !strings.Contains(err.Error(), "no lab is up") || !strings.Contains(err.Error(), "run `bin/ambitctl lab up -f examples/lab.yaml`") {
			t.Errorf("%v: %v, want the lab up command naming bin/ambitctl", args, err)
		}
	}
}
