package xdsclient

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	corev3 "ambit.dev/proto/xds/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestNodeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   NodeInfo
		ok   bool
	}{
		{"ztunnel", NodeInfo{ID: "ztunnel-a", Node: "node-a", Kind: KindZtunnel}, true},
		{"waypoint", NodeInfo{ID: "wp-1", Node: "node-a", Kind: KindWaypoint, WaypointNamespace: "shop", WaypointName: "waypoint"}, true},
		{"waypoint without gateway", NodeInfo{ID: "wp-1", Node: "node-a", Kind: KindWaypoint}, false},
		{"no node", NodeInfo{ID: "z", Kind: KindZtunnel}, false},
		{"no id", NodeInfo{Node: "node-a", Kind: KindZtunnel}, false},
		{"unknown kind", NodeInfo{ID: "z", Node: "node-a", Kind: "sidecar"}, false},
		{"ztunnel with h3", NodeInfo{ID: "z", Node: "node-a", Kind: KindZtunnel, TunnelProtocols: []string{TunnelHBONE, TunnelHBONEH3}}, true},
		{"waypoint with h3", NodeInfo{ID: "wp-1", Node: "node-a", Kind: KindWaypoint, WaypointNamespace: "shop", WaypointName: "waypoint",
			TunnelProtocols: []string{TunnelHBONE, TunnelHBONEH3}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNode(tc.in.Proto())
			if (err == nil) != tc.ok {
				t.Fatalf("ParseNode: %v", err)
			}
			if tc.ok && !reflect.DeepEqual(got, tc.in) {
				t.Errorf("round trip = %+v, want %+v", got, tc.in)
			}
		})
	}
	if _, err := ParseNode(nil); err == nil {
		t.Error("ParseNode(nil) succeeded")
	}
	// A non-string metadata value is not a node name.
	n := &corev3.Node{Id: "z", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		MetaNodeName: structpb.NewNumberValue(1), MetaKind: structpb.NewStringValue(KindZtunnel)}}}
	if _, err := ParseNode(n); err == nil {
		t.Error("ParseNode accepted a numeric node name")
	}
}

// TestTunnelProtocols: what a proxy reports it serves. No report is HBONE only (a proxy
// that predates HTTP/3); the list is read leniently (spaces, repeats, unknown names kept).
func TestTunnelProtocols(t *testing.T) {
	tests := []struct {
		meta   string // MetaTunnelProtocols; "-" for absent
		want   []string
		h2, h3 bool
	}{
		{"-", nil, true, false},
		{"HBONE", []string{"HBONE"}, true, false},
		{"HBONE,HBONE_H3", []string{"HBONE", "HBONE_H3"}, true, true},
		{" HBONE_H3 , HBONE_H3,,MASQUE", []string{"HBONE_H3", "MASQUE"}, false, true},
		{"", nil, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.meta, func(t *testing.T) {
			n := NodeInfo{ID: "z", Node: "node-a", Kind: KindZtunnel}.Proto()
			if tc.meta != "-" {
				n.Metadata.Fields[MetaTunnelProtocols] = structpb.NewStringValue(tc.meta)
			}
			got, err := ParseNode(n)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.TunnelProtocols, tc.want) {
				t.Errorf("TunnelProtocols = %q, want %q", got.TunnelProtocols, tc.want)
			}
			if got.Serves(TunnelHBONE) != tc.h2 || got.Serves(TunnelHBONEH3) != tc.h3 {
				t.Errorf("Serves(HBONE, HBONE_H3) = %v, %v, want %v, %v", got.Serves(TunnelHBONE), got.Serves(TunnelHBONEH3), tc.h2, tc.h3)
			}
		})
	}
}

func TestControllerID(t *testing.T) {
	got := ControllerID(spiffeid.RequireTrustDomainFromString("example.org")).String()
	if want := "spiffe://example.org/ns/ambit-system/sa/ambit-controller"; got != want {
		t.Errorf("ControllerID = %s, want %s", got, want)
	}
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          string
		ok            bool
	}{
		{"trimmed", "tok\n", "tok", true},
		{"empty", " \n", "", false},
		{"missing", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if tc.name != "missing" {
				if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := TokenFile(p)(t.Context())
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("TokenFile = %q, %v", got, err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	node := NodeInfo{ID: "z", Node: "n", Kind: KindZtunnel}
	h := HandlerFunc(func(string, map[string]Resource, []string) error { return nil })
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{Node: node, TypeURLs: []string{"t"}, Handler: h}, true},
		{"no types", Config{Node: node, Handler: h}, false},
		{"no handler", Config{Node: node, TypeURLs: []string{"t"}}, false},
		{"bad node", Config{TypeURLs: []string{"t"}, Handler: h}, false},
	}
	for _, tc := range tests {
		if _, err := NewClient(nil, tc.cfg); (err == nil) != tc.ok {
			t.Errorf("%s: NewClient: %v", tc.name, err)
		}
	}
}
