package capture

import (
	"net"
	"testing"
	"time"
)

// TestUDPHBONE: with the capture rules installed, a peer's datagram to the pod's UDP 15008
// reaches ztunnel's socket as addressed (HBONE over HTTP/3), the pod's own marked UDP
// socket leaves from the pod's address, and a successor's socket on 15008 (hand-over) gets
// the datagrams from then on.
func TestUDPHBONE(t *testing.T) {
	pod, peer := testPair(t)
	if err := Install(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	h3, err := ListenPacket(pod, "0.0.0.0:15008")
	if err != nil {
		t.Fatal(err)
	}
	defer h3.Close()
	var peerSock *net.UDPConn
	if err := InNetns(peer, func() error {
		var err error
		peerSock, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(10, 250, 0, 2), Port: 9000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peerSock.Close()
	read := func(c *net.UDPConn, d time.Duration) (string, *net.UDPAddr, error) {
		t.Helper()
		b := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(d))
		n, from, err := c.ReadFromUDP(b)
		return string(b[:n]), from, err
	}
	send := func(msg string) {
		t.Helper()
		if _, err := peerSock.WriteToUDP([]byte(msg), &net.UDPAddr{IP: net.IPv4(10, 250, 0, 1), Port: 15008}); err != nil {
			t.Fatal(err)
		}
	}
	send("initial")
	if got, from, err := read(h3, 5*time.Second); err != nil || got != "initial" || from.String() != "10.250.0.2:9000" {
		t.Fatalf("pod's UDP 15008 read %q from %v, %v; want the peer's datagram as sent", got, from, err)
	}
	// The socket of an outgoing QUIC connection: ephemeral port, the pod's address.
	out, err := ListenPacket(pod, "")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := out.WriteToUDP([]byte("out"), &net.UDPAddr{IP: net.IPv4(10, 250, 0, 2), Port: 9000}); err != nil {
		t.Fatal(err)
	}
	if got, from, err := read(peerSock, 5*time.Second); err != nil || got != "out" || !from.IP.Equal(net.IPv4(10, 250, 0, 1)) {
		t.Fatalf("peer read %q from %v, %v; want it from the pod's address", got, from, err)
	}
	// Hand-over: the successor's socket joins the port and takes every datagram.
	next, err := ListenPacket(pod, "0.0.0.0:15008")
	if err != nil {
		t.Fatalf("second socket on UDP 15008: %v", err)
	}
	defer next.Close()
	for range 10 {
		send("after")
	}
	for i := range 10 {
		if got, _, err := read(next, 5*time.Second); err != nil || got != "after" {
			t.Fatalf("successor datagram %d: %q, %v", i, got, err)
		}
	}
	if got, _, err := read(h3, 100*time.Millisecond); err == nil {
		t.Fatalf("the predecessor's socket still got %q", got)
	}
}
