package hbone

import (
	"context"
	"net"
	"testing"
	"time"

	"ambit.dev/mesh/wait"
)

// TestAbandonedDialsDoNotMultiplyConnections: callers that give up while a pooled
// connection is being dialled (their deadline passes) stop counting as its waiters. Before,
// every 100 abandoned callers made the next one start another dial, so 1,000 callers whose
// deadline had passed left ten pooled connections, each with its goroutines and fds. The
// rule lives in the pool both protocols share (a fix once reached only one of two copies),
// so both are held to it.
func TestAbandonedDialsDoNotMultiplyConnections(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto envOption) {
		e := newEnv(t, proto, func(_ *env, _ *ServerConfig, c *ClientConfig) {
			// A slow network: the callers give up first.
			c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				time.Sleep(300 * time.Millisecond)
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			c.ListenPacket = func(_ context.Context, network, _ string) (net.PacketConn, error) {
				time.Sleep(300 * time.Millisecond)
				return net.ListenUDP(network, nil)
			}
		})
		// The connections must be of the protocol under test: HTTP/3 must not have fallen
		// back to HTTP/2, whose pool would then be the one counted.
		pooled := e.client.h2.conns
		if e.proto == ProtocolH3 {
			pooled = e.client.h3.conns
		}
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		for range 1000 {
			if st, err := e.client.Dial(ctx, e.target()); err == nil {
				st.Close()
				t.Fatal("dial past its deadline succeeded")
			}
		}
		wait.Until(t, 5*time.Second, "the one dial in flight pooled", func() error {
			if pooled() == 0 {
				return context.DeadlineExceeded
			}
			return nil
		})
		time.Sleep(500 * time.Millisecond) // any further dial would have finished by now
		if n := e.client.Conns(); n != 1 {
			t.Fatalf("%d pooled connections after 1,000 abandoned dials, want 1", n)
		}
		if n := pooled(); n != 1 {
			t.Fatalf("%d pooled %s connections, want 1", n, e.proto)
		}
	})
}
