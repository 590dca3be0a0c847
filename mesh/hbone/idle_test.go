package hbone

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestIdleStreamsHoldNoBuffers: a tunnel that carries nothing costs no copy buffer. The
// server splices each stream to a TCP connection that stays silent; neither direction may
// hold a 32 KiB or 64 KiB buffer while it waits.
func TestIdleStreamsHoldNoBuffers(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	silent := startTCP(t, func(c *net.TCPConn) { <-release })
	t.Cleanup(func() { close(release) }) // before startTCP's cleanup waits for its handlers
	const n = 200
	dial := func(count int) {
		for range count {
			tgt := e.target()
			tgt.Authority = silent
			st, err := e.client.Dial(context.Background(), tgt)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
		}
	}
	heap := func() uint64 {
		time.Sleep(200 * time.Millisecond) // the server side settles into its waits
		runtime.GC()                       // twice: a sync.Pool keeps what was put back until the second
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	dial(10) // pools, connections and their buffers exist from here on
	before := heap()
	dial(n)
	after := heap()
	per := (int64(after) - int64(before)) / n
	t.Logf("%d idle streams: %d bytes of heap each (client and server side)", n, per)
	if per > 24<<10 {
		t.Fatalf("each idle stream holds %d bytes of heap: a copy buffer is held while it waits", per)
	}
}
