package netnstest

import (
	"sync"
	"time"
)

// Calls is the client of the hand-over tests (Istio's bar: a new connection every 50 ms
// while a ztunnel is replaced): it makes one call every period until Stop.
type Calls struct {
	stop, done chan struct{}
	mu         sync.Mutex
	n          int
	failures   []string
}

// StartCalls calls call every period on a goroutine of its own.
func StartCalls(period time.Duration, call func() error) *Calls {
	c := &Calls{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
			err := call()
			c.mu.Lock()
			c.n++
			if err != nil {
				c.failures = append(c.failures, time.Now().Format("15:04:05.000")+": "+err.Error())
			}
			c.mu.Unlock()
		}
	}()
	return c
}

// Stop ends the calls and returns how many were made and the failures, each with its time.
func (c *Calls) Stop() (calls int, failures []string) {
	close(c.stop)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.failures
}
