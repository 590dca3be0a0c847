package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

const bridgeConflist = `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cbr0"},{"type":"portmap"}]}`

func types(t *testing.T, conf []byte) []string {
	t.Helper()
	var l struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &l); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range l.Plugins {
		out = append(out, p["type"].(string))
	}
	return out
}

// TestChainUnchain: the entry goes last, once; chaining again changes nothing; unchaining
// gives back the original plugins; a single-plugin .conf becomes a list.
func TestChainUnchain(t *testing.T) {
	entry := map[string]any{"type": "ambit-cni", "node_api": "/var/run/ambit/ztunnel.sock"}
	b, changed, err := chain([]byte(bridgeConflist), entry)
	if err != nil || !changed {
		t.Fatalf("chain: changed=%v err=%v", changed, err)
	}
	if got := types(t, b); len(got) != 3 || got[2] != "ambit-cni" || got[0] != "bridge" {
		t.Fatalf("after chain: %v", got)
	}
	b2, changed, err := chain(b, entry)
	if err != nil || changed {
		t.Fatalf("second chain: changed=%v err=%v", changed, err)
	}
	if got := types(t, b2); len(got) != 3 {
		t.Fatalf("after second chain: %v", got)
	}
	b3, changed, err := unchain(b2)
	if err != nil || !changed {
		t.Fatalf("unchain: changed=%v err=%v", changed, err)
	}
	if got := types(t, b3); len(got) != 2 || got[1] != "portmap" {
		t.Fatalf("after unchain: %v", got)
	}
	if _, changed, _ := unchain(b3); changed {
		t.Fatal("unchain of a config without ambit changed it")
	}
	single, _, err := chain([]byte(`{"cniVersion":"0.4.0","name":"n","type":"bridge","bridge":"cbr0"}`), entry)
	if err != nil {
		t.Fatal(err)
	}
	if got := types(t, single); len(got) != 2 || got[0] != "bridge" {
		t.Fatalf(".conf chained: %v", got)
	}
}

func TestPrimaryConflist(t *testing.T) {
	dir := t.TempDir()
	if _, err := primaryConflist(dir); err == nil {
		t.Fatal("empty dir: want an error")
	}
	for _, n := range []string{"20-b.conflist", "10-a.conflist", KubeconfigName, "05-x.txt"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := primaryConflist(dir); err != nil || filepath.Base(p) != "10-a.conflist" {
		t.Fatalf("primaryConflist = %q, %v", p, err)
	}
}
