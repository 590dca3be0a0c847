package lab

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	sigsyaml "sigs.k8s.io/yaml"

	"ambit.dev/controller/internal/cli/clidocs"
	"ambit.dev/controller/internal/configdir"
	"ambit.dev/mesh/wait"
)

// docExempt are the lab docs' ambitctl commands TestLabDocCommands does not run, each with
// the reason; the key is the command as the doc writes it, without the program. A key that
// no doc has any more fails the test, so the list cannot rot.
var docExempt = map[string]string{
	"lab serve":                   "the sample applications' server, which the lab runs inside each pod; it serves until stopped",
	"lab up -f examples/lab.yaml": "brings a lab up: the tests share theirs (testdata/lab.yaml), and TestLabUpIsIdempotent runs lab up on it",
	"lab down":                    "removes the lab the other tests share; TestMain takes it down at the end and TestLabDownAfterCrash after a crash",
	"namespace enable shop --kubeconfig ~/.kube/config --context prod": "a Kubernetes cluster, not the lab",
	"ztunnel-config workloads":                                 "the default admin address 127.0.0.1:15000, a ztunnel run by hand: no lab ztunnel listens there (node i is at +100·(i+1))",
	"namespace enable shop --config-dir /tmp/ambit-config":     "the config-folder walkthrough: TestDocCommands (controller/internal/cli) runs it and compares its output",
	"namespace disable demo --config-dir /tmp/ambit-config":    "the config-folder walkthrough, as above",
	"namespace enable demo --config-dir /tmp/ambit-config":     "the config-folder walkthrough, as above",
	"namespace disable nowhere --config-dir /tmp/ambit-config": "the config-folder walkthrough, as above",
}

// TestLabDocCommands runs, in order, the ambitctl commands of docs/ambitctl.md and docs/lab.md
// (blocks and inline code) with the ambitctl built for this lab, from the repository root, and
// wants each to exit 0. The docs are written for the default lab (examples/lab.yaml, ports
// 15000+, /run/ambit-lab); each command gets --lab-dir of this one, and its pod and Service
// addresses and loopback ports are mapped to this lab's by name. What the commands change in
// the lab (enrolment, waypoints, applied files) is put back afterwards.
func TestLabDocCommands(t *testing.T) {
	st := e2eLab(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	addrs := docAddrs(t, root, st)
	restoreAfter(t, st)

	used := map[string]bool{}
	ran := 0
	for _, doc := range []string{"docs/ambitctl.md", "docs/lab.md"} {
		src, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range clidocs.Parse(doc, src) {
			if !c.Ambitctl() {
				continue
			}
			key := strings.Join(c.Args[1:], " ")
			if why, ok := docExempt[key]; ok {
				used[key] = true
				t.Logf("%s: not run: %s", c, why)
				continue
			}
			if c.Block == "" && len(c.Args) < 3 {
				t.Logf("%s: not run: names a command group in prose", c)
				continue
			}
			args := []string{}
			for _, a := range c.Args[1:] {
				args = append(args, addrs.replace(t, c, a))
			}
			args = append(args, "--lab-dir", e2eOpts.Dir)
			run := func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, e2eOpts.Ambitctl, args...)
				cmd.Dir = root
				if out, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("ran %v: %v\n%s", args, err, out)
				}
				return nil
			}
			err := run()
			if err != nil && c.Args[1] == "lab" && c.Args[2] == "call" {
				// A call right after a change (a waypoint bound, a route applied) may meet the
				// ztunnels while they switch, as the demo's own waits show: it must pass
				// within the time config takes to settle.
				t.Logf("%s: %v; trying again", c, err)
				wait.Until(t, settle, c.String()+" to exit 0", run)
				err = nil
			}
			if err != nil {
				t.Errorf("%s: %v", c, err)
				continue
			}
			ran++
		}
	}
	for key := range docExempt {
		if !used[key] {
			t.Errorf("docExempt lists %q, which no lab doc has any more", key)
		}
	}
	if ran < 25 {
		t.Errorf("ran %d doc commands, want at least 25", ran)
	}
}

// addrMap maps the default lab's addresses, as the docs write them, to this lab's.
type addrMap struct {
	ips  map[string]string // pod and Service addresses, matched by namespace/name
	port int               // added to a loopback port of the default lab's range
}

var docAddr = regexp.MustCompile(`\b(\d+\.\d+\.\d+\.\d+)(:(\d+))?\b`)

func (m addrMap) replace(t *testing.T, c *clidocs.Command, word string) string {
	return docAddr.ReplaceAllStringFunc(word, func(s string) string {
		g := docAddr.FindStringSubmatch(s)
		ip, port := g[1], g[3]
		if ip == "127.0.0.1" {
			if p, err := strconv.Atoi(port); err == nil && p >= 15000 && p < 16000 {
				port = strconv.Itoa(p + m.port)
			}
		} else if to, ok := m.ips[ip]; ok {
			ip = to
		} else {
			t.Errorf("%s: address %s is no pod or Service of examples/lab.yaml that this lab has too", c, ip)
		}
		if port != "" {
			return ip + ":" + port
		}
		return ip
	})
}

// docAddrs pairs the addresses of examples/lab.yaml's pods and Services with this lab's of the
// same namespace and name.
func docAddrs(t *testing.T, root string, st *State) addrMap {
	t.Helper()
	m := addrMap{ips: map[string]string{}, port: e2ePortBase - 15000}
	topo, err := LoadTopology(filepath.Join(root, "examples/lab.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range topo.Pods {
		if q, err := st.Pod(p.Namespace, p.Name); err == nil {
			m.ips[p.IP] = q.IP
		}
	}
	ours := services(t, "testdata/lab")
	for name, vip := range services(t, topo.ConfigDir()) {
		if v, ok := ours[name]; ok {
			m.ips[vip] = v
		}
	}
	return m
}

// services returns the cluster IPs of the Services defined in a folder, by namespace/name.
func services(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			var o struct {
				Kind     string
				Metadata struct{ Name, Namespace string }
				Spec     struct{ ClusterIP string }
			}
			if err := sigsyaml.Unmarshal(doc, &o); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if _, err := netip.ParseAddr(o.Spec.ClusterIP); o.Kind == "Service" && err == nil {
				out[o.Metadata.Namespace+"/"+o.Metadata.Name] = o.Spec.ClusterIP
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// restoreAfter puts the lab back as it is now once the test ends: the waypoints the docs
// start are deleted, the config folder gets its files back (enrolment, bindings, applied
// policies), and the demo namespace is captured, or not, as before.
func restoreAfter(t *testing.T, st *State) {
	t.Helper()
	s, err := GetStatus(context.Background(), e2eOpts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	captured := false
	for _, p := range s.Pods {
		if p.Namespace == "demo" && p.Captured {
			captured = true
		}
	}
	// The waypoints the docs' commands make (by name, or with apply's defaults): every one
	// that is not there now goes with the lab state's record of it.
	hadWaypoint := map[string]bool{}
	if cur, err := LoadState(e2eOpts.Dir); err == nil {
		for _, w := range cur.Waypoints {
			hadWaypoint[w.Namespace+"/"+w.Name] = true
		}
	}
	before := map[string][]byte{}
	err = filepath.WalkDir(st.ConfigDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			before[path], err = os.ReadFile(path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if cur, err := LoadState(e2eOpts.Dir); err == nil {
			for _, w := range cur.Waypoints {
				if hadWaypoint[w.Namespace+"/"+w.Name] {
					continue
				}
				if err := DeleteWaypoint(ctx, e2eOpts, w.Namespace, w.Name); err != nil {
					t.Errorf("delete waypoint %s/%s: %v", w.Namespace, w.Name, err)
				}
			}
		}
		err := filepath.WalkDir(st.ConfigDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if _, ok := before[path]; !ok {
				return os.Remove(path)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		for path, b := range before {
			if now, err := os.ReadFile(path); err != nil || !bytes.Equal(now, b) {
				if err := configdir.WriteFileAtomic(path, b, 0o644); err != nil {
					t.Error(err)
				}
			}
		}
		if err := WaitCaptured(ctx, e2eOpts.Dir, "demo", captured, settle); err != nil {
			t.Error(err)
		}
		settled(t, st)
	})
}
