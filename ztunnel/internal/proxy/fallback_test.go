package proxy

import (
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
)

// TestH3FallbackInDump: a peer marked HBONE_H3 whose UDP 15008 does not answer is reached
// over HTTP/2, and Node.TunnelFallbacks (/config_dump's tunnel_fallbacks) names the pod and
// the peer; a peer reached over HTTP/3 is not listed.
func TestH3FallbackInDump(t *testing.T) {
	m := newMeshProto(t, nil, true)
	startApp(t)
	if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call over HTTP/3 = %q, %v", got, err)
	}
	if fb := m.node.TunnelFallbacks(); len(fb) != 0 {
		t.Fatalf("fallbacks with HTTP/3 working: %+v", fb)
	}
	// The server pod comes back without a UDP socket: still marked HBONE_H3, UDP refused.
	m.server.Close()
	m.h3 = false
	sw := workloadFor("server", serverIP, "server")
	sw.TunnelProtocol = configv1.TunnelProtocol_HBONE_H3
	m.server = m.startPod(sw, serverIP)
	// A new client pod, which has UDP, so that no QUIC connection to the old server is pooled.
	m.client.Close()
	m.h3 = true
	cw := workloadFor("client", clientIP, "client")
	cw.Services = nil
	m.client = m.startPod(cw, clientIP)
	if got, err := m.call(serverIP + ":8080"); err != nil || got != "from "+serverIP+": hello" {
		t.Fatalf("call with UDP refused = %q, %v", got, err)
	}
	fb := m.node.TunnelFallbacks()
	if len(fb) != 1 || fb[0].Pod != "shop/client" || fb[0].Peer != serverIP+":15008" || !fb[0].Until.After(time.Now()) {
		t.Fatalf("fallbacks = %+v, want shop/client → %s:15008 until some time ahead", fb, serverIP)
	}
}
