// Package load generates the benchmark's traffic from inside the client pod. The HTTP tests
// use fortio's load generator (the one behind Istio's published figures) at a fixed rate;
// every request's latency is recorded exactly through fortio's access-logger hook, rather
// than read off fortio's bucketed histogram, whose buckets are too coarse for differences of
// tens of microseconds. Bulk throughput and connection churn are measured here too, and
// idle connections are held open for the memory a proxy spends on each (RunHold).
//
// A load process runs entirely inside the client pod's network namespace (started with
// `ip netns exec`), because fortio dials from goroutines of its own.
package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"ambit.dev/bench/internal/stats"
	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/periodic"
	flog "fortio.org/log"
)

// Mode is what a load run measures.
type Mode string

// The modes of a load run.
const (
	// HTTP sends GET requests at a fixed rate over a fixed number of keep-alive connections.
	HTTP Mode = "http"
	// Bulk reads from one connection as fast as it can.
	Bulk Mode = "bulk"
	// Churn sends one request per new connection, as fast as it can.
	Churn Mode = "churn"
	// Hold opens idle connections to an echo server and holds them (RunHold).
	Hold Mode = "hold"
)

// Config is one load run.
type Config struct {
	Mode Mode `json:"mode"`
	// Target is a URL for HTTP and Churn, host:port for Bulk and Hold.
	Target string  `json:"target"`
	QPS    float64 `json:"qps"`
	// Connections is the number of connections; for Hold, the most it may be asked to hold.
	Connections int `json:"connections"`
	// Duration is how long the run lasts; for Hold, the most it holds.
	Duration time.Duration `json:"duration"`
}

// Validate reports the first field that makes no sense for the mode.
func (c Config) Validate() error {
	switch {
	case c.Mode != HTTP && c.Mode != Bulk && c.Mode != Churn && c.Mode != Hold:
		return fmt.Errorf("mode: %q is not one of http, bulk, churn, hold", c.Mode)
	case c.Target == "":
		return errors.New("target: empty")
	case c.Duration <= 0:
		return fmt.Errorf("duration: %s is not positive", c.Duration)
	case c.Mode == HTTP && c.QPS <= 0:
		return fmt.Errorf("qps: %v; an http run is at a fixed rate", c.QPS)
	case c.Mode != Bulk && c.Connections < 1:
		return fmt.Errorf("connections: %d", c.Connections)
	}
	return nil
}

// Result is what a load run measured.
type Result struct {
	Latency stats.Summary `json:"latency"`
	// Gbps is the bulk throughput; ConnPerSec the rate of successful connection + request
	// cycles in a churn run.
	Gbps       float64 `json:"gbps,omitempty"`
	ConnPerSec float64 `json:"conn_per_s,omitempty"`
	Elapsed    float64 `json:"elapsed_s"`
}

// Run performs one load run.
func Run(ctx context.Context, c Config) (Result, error) {
	if err := c.Validate(); err != nil {
		return Result{}, err
	}
	flog.SetLogLevelQuiet(flog.Error)
	switch c.Mode {
	case Bulk:
		return bulk(ctx, c)
	case Hold:
		return Result{}, fmt.Errorf("mode hold: it takes its counts from a caller, through RunHold")
	default:
		return fortio(ctx, c)
	}
}

// recorder is fortio's access-logger hook, recording every request's latency.
type recorder struct{ stats.Recorder }

func (r *recorder) Start(ctx context.Context, _ periodic.ThreadID, _ int64, _ time.Time) context.Context {
	return ctx
}

func (r *recorder) Report(_ context.Context, _ periodic.ThreadID, _ int64, _ time.Time, latency float64, ok bool, _ string) {
	r.Record(time.Duration(latency*float64(time.Second)), !ok)
}

func (r *recorder) Info() string { return "ambit bench recorder" }

func fortio(ctx context.Context, c Config) (Result, error) {
	rec := &recorder{}
	o := &fhttp.HTTPRunnerOptions{
		RunnerOptions: periodic.RunnerOptions{
			QPS:          c.QPS,
			NumThreads:   c.Connections,
			Duration:     c.Duration,
			Out:          io.Discard,
			Uniform:      true,
			AccessLogger: rec,
			Stop:         periodic.NewAborter(),
		},
		HTTPOptions: fhttp.HTTPOptions{URL: c.Target, HTTPReqTimeOut: 5 * time.Second},
		// A proxy that is slow to open its first connection must not end the run:
		// its errors are counted instead.
		AllowInitialErrors: true,
	}
	if c.Mode == Churn {
		o.QPS = -1 // as fast as it goes
		o.DisableKeepAlive = true
	}
	stop := context.AfterFunc(ctx, func() { o.Stop.Abort(false) })
	defer stop()
	res, err := fhttp.RunHTTPTest(o)
	if err != nil {
		return Result{}, fmt.Errorf("fortio: %w", err)
	}
	elapsed := res.ActualDuration
	out := Result{Latency: rec.Summary(elapsed), Elapsed: elapsed.Seconds()}
	if c.Mode == Churn && elapsed > 0 {
		out.ConnPerSec = float64(out.Latency.Count) / elapsed.Seconds()
	}
	return out, ctx.Err()
}

func bulk(ctx context.Context, c Config) (Result, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.Target)
	if err != nil {
		return Result{}, fmt.Errorf("bulk: %w", err)
	}
	defer conn.Close()
	buf := make([]byte, 256<<10)
	// The first bytes carry the connection setup and slow start; count from after them.
	if _, err := io.ReadFull(conn, buf[:64<<10]); err != nil {
		return Result{}, fmt.Errorf("bulk: first bytes: %w", err)
	}
	start := time.Now()
	deadline := start.Add(c.Duration)
	_ = conn.SetReadDeadline(deadline)
	var n int64
	for {
		k, err := conn.Read(buf)
		n += int64(k)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return Result{}, fmt.Errorf("bulk: after %d bytes: %w", n, err)
		}
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
	}
	elapsed := time.Since(start)
	return Result{Gbps: float64(n) * 8 / elapsed.Seconds() / 1e9, Elapsed: elapsed.Seconds()}, nil
}
