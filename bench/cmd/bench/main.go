// Command bench is ambit's data-plane benchmark (`make bench`, `make bench-quick`).
//
//	bench run [--quick] [flags]   bring the bench lab up, run every scenario, write the results
//	bench load [flags]            one load run from inside the client pod; prints JSON (hold: a line per count read)
//	bench serve [flags]           the benchmark's server, inside the server pod
//	bench plot-controller [flags] the plots of `make bench-controller`'s results
//
// run needs root: it drives the local lab (network namespaces, iptables).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ambit.dev/bench/internal/harness"
	"ambit.dev/bench/internal/load"
	"ambit.dev/bench/internal/report"
	"ambit.dev/bench/internal/server"
)

const usage = `usage: bench COMMAND [flags]   (bench COMMAND --help for its flags)

  run              bring the bench lab up, run every scenario, write the results (root; make bench)
  load             one load run from inside the client pod; prints JSON
  serve            the benchmark's server, inside the server pod
  plot-controller  the plots of make bench-controller's results
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = run(ctx, os.Args[2:])
	case "load":
		err = runLoad(ctx, os.Args[2:])
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "plot-controller":
		err = plotController(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (run, load, serve or plot-controller)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	quick := fs.Bool("quick", false, "shorter runs, fewer connection counts, no profile, results in bench/results/quick and the doc left alone")
	binDir := fs.String("bin-dir", "bin", "directory holding controller, ztunnel and ambitctl")
	scenarios := fs.String("scenarios", "", "comma-separated scenarios to run (default all)")
	results := fs.String("results", "", "results directory (default bench/results, or bench/results/quick with --quick)")
	doc := fs.String("doc", "", "benchmarks doc to write the section into (default docs/benchmarks.md; none with --quick)")
	command := fs.String("command", "", "command the doc names as the one that made the figures")
	_ = fs.Parse(args)
	cfg := harness.Default()
	if *quick {
		cfg = harness.Quick()
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Self = self
	if cfg.BinDir, err = filepath.Abs(*binDir); err != nil {
		return err
	}
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
	}
	if *results != "" {
		cfg.ResultsDir = *results
	}
	if *doc != "" {
		cfg.Doc = *doc
	}
	if *command != "" {
		cfg.Command = *command
	}
	cfg.Out = os.Stdout
	start := time.Now()
	_, err = harness.Run(ctx, cfg)
	fmt.Printf("bench: done in %s\n", time.Since(start).Round(time.Second))
	return err
}

func runLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	var c load.Config
	mode := fs.String("mode", "http", "http, bulk, churn or hold (idle connections to an echo server, counts read from stdin, a JSON line each)")
	fs.StringVar(&c.Target, "target", "", "URL (http, churn) or host:port (bulk, hold)")
	fs.Float64Var(&c.QPS, "qps", 0, "request rate (http)")
	fs.IntVar(&c.Connections, "connections", 1, "connections (http, churn); the most to hold (hold)")
	fs.DurationVar(&c.Duration, "duration", 5*time.Second, "how long to run; the most to hold (hold)")
	_ = fs.Parse(args)
	c.Mode = load.Mode(*mode)
	if c.Mode == load.Hold {
		return load.RunHold(ctx, c, os.Stdin, os.Stdout)
	}
	res, err := load.Run(ctx, c)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var c server.Config
	fs.StringVar(&c.HTTPAddr, "http", ":8080", "HTTP listen address")
	fs.StringVar(&c.BulkAddr, "bulk", ":9100", "bulk source listen address")
	fs.StringVar(&c.EchoAddr, "echo", "", "TCP echo listen address (empty: none)")
	size := fs.String("size", "1024", "HTTP reply body in bytes")
	_ = fs.Parse(args)
	n, err := strconv.Atoi(*size)
	if err != nil || n < 0 {
		return fmt.Errorf("size: %q is not a byte count", *size)
	}
	c.Size = n
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	return server.Run(ctx, c, log)
}

// plotController draws bench/results/controller.jsonl (`make bench-controller`) as
// controller.png (the times) and controller-rss.png (the memory) beside it.
func plotController(args []string) error {
	fs := flag.NewFlagSet("plot-controller", flag.ExitOnError)
	in := fs.String("in", "bench/results/controller.jsonl", "the push benchmark's JSON lines, one per size")
	_ = fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("plot-controller: unexpected argument %q", fs.Arg(0))
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	runs, err := report.ReadControllerRuns(f)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	date := st.ModTime().UTC().Format("2006-01-02")
	clients := runs[0].Clients
	files, err := report.WriteDrawings(filepath.Dir(*in),
		report.Drawing{File: "controller.png", Draw: func(w io.Writer) error {
			return report.PlotControllerTime(w, runs, fmt.Sprintf("ambit controller: full sync and change to %d clients against pods (%s)", clients, date))
		}},
		report.Drawing{File: "controller-rss.png", Draw: func(w io.Writer) error {
			return report.PlotControllerRSS(w, runs, fmt.Sprintf("ambit controller: peak RSS against pods (%s)", date))
		}})
	if err != nil {
		return err
	}
	fmt.Printf("bench: wrote %s\n", strings.Join(files, ", "))
	return nil
}
