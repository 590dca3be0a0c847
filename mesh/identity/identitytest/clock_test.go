package identitytest

import (
	"context"
	"testing"
	"time"
)

func TestFakeClock(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	a, b := c.NewTimer(2*time.Second), c.NewTimer(time.Second)
	stopped := c.NewTimer(time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop must report true once for a pending timer, then false")
	}
	if got := c.Timers(); len(got) != 2 || !got[0].Equal(start.Add(time.Second)) {
		t.Fatalf("Timers = %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if dl, err := c.WaitForTimer(ctx, nil); err != nil || !dl.Equal(start.Add(time.Second)) {
		t.Fatalf("WaitForTimer = %v, %v", dl, err)
	}

	c.Advance(999 * time.Millisecond)
	select {
	case <-b.C():
		t.Fatal("timer fired early")
	default:
	}
	c.Advance(time.Millisecond)
	if got := <-b.C(); !got.Equal(start.Add(time.Second)) {
		t.Fatalf("fired at %v", got)
	}
	if b.Stop() {
		t.Fatal("Stop of a fired timer returned true")
	}
	c.Set(start) // backwards: ignored
	if !c.Now().Equal(start.Add(time.Second)) {
		t.Fatalf("Set moved time backwards to %v", c.Now())
	}
	c.Set(start.Add(time.Hour))
	<-a.C()
	select {
	case <-stopped.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if now := <-c.NewTimer(0).C(); !now.Equal(c.Now()) {
		t.Fatal("zero timer did not fire at once")
	}

	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if _, err := c.WaitForTimer(short, nil); err == nil {
		t.Fatal("WaitForTimer with no timers returned")
	}
}
