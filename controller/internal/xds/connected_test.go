package xds

import (
	"reflect"
	"testing"
	"time"

	"ambit.dev/mesh/xdsclient"
)

// TestConnectedReportsTunnelProtocols: Options.Connected sees what each proxy reported it
// serves (node metadata TUNNEL_PROTOCOLS), and nothing for a proxy that reported nothing.
func TestConnectedReportsTunnelProtocols(t *testing.T) {
	e := newEnv(t)
	next := func() xdsclient.NodeInfo {
		t.Helper()
		select {
		case info := <-e.connected:
			return info
		case <-time.After(5 * time.Second):
			t.Fatal("Connected was not called")
		}
		return xdsclient.NodeInfo{}
	}
	e.connectAs(xdsclient.NodeInfo{ID: "ztunnel-a", Node: "node-a", Kind: xdsclient.KindZtunnel,
		TunnelProtocols: []string{xdsclient.TunnelHBONE, xdsclient.TunnelHBONEH3}}, newRecorder())
	if got := next(); !got.Serves(xdsclient.TunnelHBONEH3) || !reflect.DeepEqual(got.TunnelProtocols, []string{"HBONE", "HBONE_H3"}) {
		t.Errorf("ztunnel-a reported %q, want HBONE and HBONE_H3", got.TunnelProtocols)
	}
	e.connect("node-b", "ztunnel-b", newRecorder())
	if got := next(); got.Node != "node-b" || got.Serves(xdsclient.TunnelHBONEH3) {
		t.Errorf("ztunnel-b (no report) = %+v, want HBONE only", got)
	}
}
