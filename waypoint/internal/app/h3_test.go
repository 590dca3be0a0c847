package app

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRunOpensHBONEUDP: the waypoint serves HBONE over HTTP/3 on the UDP port of its HBONE
// address (the same number as the TCP one): that port taken fails the start, naming it.
func TestRunOpensHBONEUDP(t *testing.T) {
	cfg := lifecycleConfig(t)
	cfg.HBONEAddr = freeAddr(t)
	busy, err := net.ListenPacket("udp", cfg.HBONEAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "hbone udp listener") {
			t.Fatalf("Run with the HBONE UDP port in use: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run with the HBONE UDP port in use did not fail")
	}
}
