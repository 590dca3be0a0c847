package model

import (
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestTunnelProtocolDecision: HBONE_H3 needs both the setting (pod label, else namespace
// label, else the mesh default) and a node whose ztunnel serves HTTP/3.
func TestTunnelProtocolDecision(t *testing.T) {
	h3 := map[string]string{LabelDataplaneMode: ModeAmbient, LabelTunnelProtocol: TunnelModeHBONEH3}
	amb := map[string]string{LabelDataplaneMode: ModeAmbient}
	tests := []struct {
		name     string
		nsLabels map[string]string
		podLabel string // "-" for none
		mesh     string
		servesH3 bool
		want     configv1.TunnelProtocol
	}{
		{"namespace asks, node serves", h3, "-", "", true, configv1.TunnelProtocol_HBONE_H3},
		{"namespace asks, node does not serve", h3, "-", "", false, configv1.TunnelProtocol_HBONE},
		{"no setting, node serves", amb, "-", "", true, configv1.TunnelProtocol_HBONE},
		{"mesh default, node serves", amb, "-", TunnelModeHBONEH3, true, configv1.TunnelProtocol_HBONE_H3},
		{"namespace says hbone over mesh default", map[string]string{LabelDataplaneMode: ModeAmbient, LabelTunnelProtocol: TunnelModeHBONE}, "-", TunnelModeHBONEH3, true, configv1.TunnelProtocol_HBONE},
		{"pod asks in a plain namespace", amb, TunnelModeHBONEH3, "", true, configv1.TunnelProtocol_HBONE_H3},
		{"pod opts out of the namespace's h3", h3, TunnelModeHBONE, "", true, configv1.TunnelProtocol_HBONE},
		{"typo means hbone", map[string]string{LabelDataplaneMode: ModeAmbient, LabelTunnelProtocol: "h3"}, "-", TunnelModeHBONEH3, true, configv1.TunnelProtocol_HBONE},
		{"not enrolled", map[string]string{LabelTunnelProtocol: TunnelModeHBONEH3}, "-", "", true, configv1.TunnelProtocol_NONE},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			labels := map[string]string{}
			if tc.podLabel != "-" {
				labels[LabelTunnelProtocol] = tc.podLabel
			}
			p := pod("apps", "a", "node-1", "10.0.0.1", labels)
			in := WorkloadInputs{Options: Options{TunnelProtocol: tc.mesh}.WithDefaults(), Namespace: namespace("apps", tc.nsLabels),
				H3Nodes: map[string]bool{"node-1": tc.servesH3}}
			w, err := BuildWorkload(p, in)
			if err != nil {
				t.Fatal(err)
			}
			if w.GetTunnelProtocol() != tc.want {
				t.Errorf("tunnel protocol = %v, want %v", w.GetTunnelProtocol(), tc.want)
			}
		})
	}
	for _, v := range []string{"", TunnelModeHBONE, TunnelModeHBONEH3} {
		if err := ValidTunnelMode(v); err != nil {
			t.Errorf("ValidTunnelMode(%q) = %v", v, err)
		}
	}
	if ValidTunnelMode("HBONE_H3") == nil {
		t.Error("ValidTunnelMode accepted HBONE_H3 (the enum name, not the label value)")
	}
}

// TestIndexNodeTunnelH3: a ztunnel's report and the namespace label each recompute exactly
// the workloads they affect.
func TestIndexNodeTunnelH3(t *testing.T) {
	x, errs := Build(Options{}, []runtime.Object{
		namespace("apps", map[string]string{LabelDataplaneMode: ModeAmbient, LabelTunnelProtocol: TunnelModeHBONEH3}),
		pod("apps", "a", "node-1", "10.0.0.1", nil),
		pod("apps", "b", "node-2", "10.0.0.2", nil),
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	proto := func(name string) configv1.TunnelProtocol {
		r := x.For(Proxy{ID: "z", Node: "node-1", Kind: KindZtunnel})[configv1.WorkloadTypeURL][WorkloadUID(DefaultCluster, "apps", name)]
		return r.Message.(*configv1.Workload).GetTunnelProtocol()
	}
	want := func(step string, a, b configv1.TunnelProtocol, changes int, got []Change) {
		t.Helper()
		if proto("a") != a || proto("b") != b || len(got) != changes {
			t.Errorf("%s: a=%v b=%v (%d changes), want a=%v b=%v (%d changes)", step, proto("a"), proto("b"), len(got), a, b, changes)
		}
	}
	want("no report", configv1.TunnelProtocol_HBONE, configv1.TunnelProtocol_HBONE, 0, nil)

	if !x.SetNodeTunnelH3("node-1", true) {
		t.Error("SetNodeTunnelH3(node-1, true) reported no change")
	}
	want("node-1 serves h3", configv1.TunnelProtocol_HBONE_H3, configv1.TunnelProtocol_HBONE, 1, x.Commit())
	if x.SetNodeTunnelH3("node-1", true) {
		t.Error("repeating a report reported a change")
	}
	want("same report", configv1.TunnelProtocol_HBONE_H3, configv1.TunnelProtocol_HBONE, 0, x.Commit())

	if err := x.Upsert(namespace("apps", map[string]string{LabelDataplaneMode: ModeAmbient})); err != nil {
		t.Fatal(err)
	}
	want("label removed", configv1.TunnelProtocol_HBONE, configv1.TunnelProtocol_HBONE, 1, x.Commit())
	if err := x.Upsert(namespace("apps", map[string]string{LabelDataplaneMode: ModeAmbient, LabelTunnelProtocol: TunnelModeHBONEH3})); err != nil {
		t.Fatal(err)
	}
	want("label back", configv1.TunnelProtocol_HBONE_H3, configv1.TunnelProtocol_HBONE, 1, x.Commit())

	x.SetNodeTunnelH3("node-1", false) // an older ztunnel took over
	want("node-1 no longer serves h3", configv1.TunnelProtocol_HBONE, configv1.TunnelProtocol_HBONE, 1, x.Commit())
}

// TestIndexWaypointTunnelH3: a waypoint is tunnelled to over HTTP/3 when its Gateway's
// namespace asks for it and the waypoint reported that it serves it; the Waypoint and the
// binding every workload carries say so, and taking either away goes back to HBONE.
func TestIndexWaypointTunnelH3(t *testing.T) {
	asks := map[string]string{LabelDataplaneMode: ModeAmbient, LabelTunnelProtocol: TunnelModeHBONEH3}
	x, errs := Build(Options{}, []runtime.Object{
		namespace("apps", asks),
		waypointGW("apps", "wp", "", "10.0.0.200"),
		pod("apps", "a", "node-1", "10.0.0.1", map[string]string{LabelUseWaypoint: "wp"}),
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	got := func() (wp, binding configv1.TunnelProtocol) {
		res := x.For(Proxy{ID: "z", Node: "node-1", Kind: KindZtunnel})
		w := res[configv1.WaypointTypeURL]["apps/wp"].Message.(*configv1.Waypoint)
		wl := res[configv1.WorkloadTypeURL][WorkloadUID(DefaultCluster, "apps", "a")].Message.(*configv1.Workload)
		return w.GetTunnelProtocol(), wl.GetWaypoint().GetTunnelProtocol()
	}
	check := func(step string, want configv1.TunnelProtocol) {
		t.Helper()
		if wp, b := got(); wp != want || b != want {
			t.Errorf("%s: waypoint %v, workload's binding %v; want %v", step, wp, b, want)
		}
	}
	check("asked, not reported", configv1.TunnelProtocol_HBONE)
	if !x.SetWaypointTunnelH3("apps", "wp", true) {
		t.Fatal("the first report changed nothing")
	}
	x.Commit()
	check("asked and served", configv1.TunnelProtocol_HBONE_H3)
	if x.SetWaypointTunnelH3("apps", "wp", true) {
		t.Error("the same report again counted as a change")
	}
	if err := x.Upsert(namespace("apps", map[string]string{LabelDataplaneMode: ModeAmbient})); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	check("served, no longer asked", configv1.TunnelProtocol_HBONE)
	if err := x.Upsert(namespace("apps", asks)); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	check("asked again", configv1.TunnelProtocol_HBONE_H3)
	x.SetWaypointTunnelH3("apps", "wp", false)
	x.Commit()
	check("no longer served", configv1.TunnelProtocol_HBONE)
}
