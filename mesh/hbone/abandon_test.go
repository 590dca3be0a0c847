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
// deadline had passed left ten pooled connections, each with its goroutines and fds.
func TestAbandonedDialsDoNotMultiplyConnections(t *testing.T) {
	e := newEnv(t, func(_ *env, _ *ServerConfig, c *ClientConfig) {
		c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			time.Sleep(300 * time.Millisecond) // a slow network: the callers give up first
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	})
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	for range 1000 {
		if st, err := e.client.Dial(ctx, e.target()); err == nil {
			st.Close()
			t.Fatal("dial past its deadline succeeded")
		}
	}
	wait.Until(t, 5*time.Second, "the one dial in flight pooled", func() error {
		if e.client.Conns() == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // any further dial would have finished by now
	if n := e.client.Conns(); n != 1 {
		t.Fatalf("%d pooled connections after 1,000 abandoned dials, want 1", n)
	}
}
