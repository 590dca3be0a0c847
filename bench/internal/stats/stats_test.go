package stats

import (
	"sync"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i)*time.Microsecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{50, 500 * time.Microsecond},
		{90, 900 * time.Microsecond},
		{99, 990 * time.Microsecond},
		{99.9, 999 * time.Microsecond},
		{100, 1000 * time.Microsecond},
		{0.01, 1 * time.Microsecond},
	} {
		if got := Percentile(s, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("empty: %v", got)
	}
	one := []time.Duration{7 * time.Millisecond}
	if got := Percentile(one, 99.9); got != 7*time.Millisecond {
		t.Errorf("one sample: %v", got)
	}
}

func TestSummarize(t *testing.T) {
	// unsorted input, errors apart from the percentiles but inside the rate
	in := []time.Duration{300 * time.Microsecond, 100 * time.Microsecond, 200 * time.Microsecond, 400 * time.Microsecond}
	s := Summarize(in, 1, time.Second)
	want := Summary{Count: 4, Errors: 1, QPS: 5, P50: 200, P90: 400, P99: 400, P999: 400, Max: 400}
	if s != want {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
	if in[0] != 300*time.Microsecond {
		t.Fatal("Summarize sorted its input in place")
	}
	if z := Summarize(nil, 3, 0); z.Count != 0 || z.Errors != 3 || z.QPS != 0 || z.P99 != 0 {
		t.Fatalf("empty: %+v", z)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	var r Recorder
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				r.Record(time.Duration(i)*time.Microsecond, i%50 == 0)
			}
		}()
	}
	wg.Wait()
	s := r.Summary(2 * time.Second)
	if s.Count != 784 || s.Errors != 16 || s.QPS != 400 {
		t.Fatalf("%+v", s)
	}
}
