package hbone

import (
	"sync"
	"time"
)

// deadline is a settable, resettable expiry that waiters select on, as net.Conn deadlines
// need: setting a new time re-arms it, a past time fires it at once, zero disarms it.
//
// A deadline set again before it fires re-arms the timer it has rather than making a new
// one: a server that sets a read deadline around every request (the waypoint does three
// times a request) would otherwise allocate a timer and a closure for each.
type deadline struct {
	mu    sync.Mutex
	ch    chan struct{} // closed when the deadline has passed
	timer *time.Timer   // closes tch when it fires; nil once it has fired
	tch   chan struct{} // the channel timer closes: reusable while it is still ch
	armed bool          // timer is running
}

func newDeadline() *deadline { return &deadline{ch: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.armed {
		d.armed = false
		if !d.timer.Stop() {
			<-d.tch // it fired: wait until its close of tch is done
			d.timer = nil
		}
	}
	closed := isClosed(d.ch)
	if t.IsZero() {
		if closed {
			d.ch = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.ch = make(chan struct{})
		}
		if d.timer != nil && d.tch == d.ch {
			d.timer.Reset(dur)
		} else {
			ch := d.ch
			d.timer, d.tch = time.AfterFunc(dur, func() { close(ch) }), ch
		}
		d.armed = true
		return
	}
	if !closed {
		close(d.ch)
	}
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
