// Package stats turns per-request latencies into the percentiles the benchmark publishes.
// It keeps every sample instead of a bucketed histogram: a run is at most tens of thousands
// of requests, and exact order statistics matter when the differences being compared are
// tens of microseconds.
package stats

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Recorder collects request latencies from many goroutines.
type Recorder struct {
	mu      sync.Mutex
	samples []time.Duration
	errors  int64
}

// Record adds one request: its latency, and whether it failed.
func (r *Recorder) Record(d time.Duration, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if failed {
		r.errors++
		return
	}
	r.samples = append(r.samples, d)
}

// Summary returns the percentiles of what was recorded over elapsed.
func (r *Recorder) Summary(elapsed time.Duration) Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Summarize(r.samples, r.errors, elapsed)
}

// Summary is the latency distribution of one run. Latencies are in microseconds.
type Summary struct {
	Count  int64   `json:"count"`
	Errors int64   `json:"errors"`
	QPS    float64 `json:"qps"`
	P50    float64 `json:"p50_us"`
	P90    float64 `json:"p90_us"`
	P99    float64 `json:"p99_us"`
	P999   float64 `json:"p999_us"`
	Max    float64 `json:"max_us"`
}

// Summarize computes the summary of successful request latencies; errors are counted
// apart and do not enter the percentiles. The achieved rate counts every request, failed
// or not. samples is not modified.
func Summarize(samples []time.Duration, errors int64, elapsed time.Duration) Summary {
	s := Summary{Count: int64(len(samples)), Errors: errors}
	if elapsed > 0 {
		s.QPS = float64(int64(len(samples))+errors) / elapsed.Seconds()
	}
	if len(samples) == 0 {
		return s
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	s.P50 = micros(Percentile(sorted, 50))
	s.P90 = micros(Percentile(sorted, 90))
	s.P99 = micros(Percentile(sorted, 99))
	s.P999 = micros(Percentile(sorted, 99.9))
	s.Max = micros(sorted[len(sorted)-1])
	return s
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of sorted: the
// smallest sample that at least p% of the samples do not exceed. Nearest rank never
// invents a value between two samples, so p99.9 of a short run is an observed latency.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The epsilon keeps 99.9% of 1000 at rank 999 despite binary floating point.
	rank := int(math.Ceil(p/100*float64(len(sorted)) - 1e-9))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func micros(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)*10) / 10 }
