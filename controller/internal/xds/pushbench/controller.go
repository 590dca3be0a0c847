package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"ambit.dev/controller/internal/caserver"
	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/xds"
	"ambit.dev/mesh/identity"
	"ambit.dev/mesh/xdsclient"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Flow-control windows: a full config is megabytes in one message, which the default 64 KiB
// window would trickle through in round trips.
const (
	windowSize     = 4 << 20
	connWindowSize = 16 << 20
)

type result struct {
	Pods        int     `json:"pods"`
	Services    int     `json:"services"`
	Clients     int     `json:"clients"`
	FullSyncMS  float64 `json:"full_sync_ms"`
	ChangeP50MS float64 `json:"change_p50_ms"`
	ChangeP99MS float64 `json:"change_p99_ms"`
	RSSMB       float64 `json:"rss_mb"`
	// What the full sync cost each side: the controller's CPU, the clients' CPU, the part of
	// it spent in the kernel and the clients' page faults (most of that kernel time: they
	// touch their held config for the first time), and the machine's transparent huge page
	// setting, which decides how many faults there are (docs/benchmarks.md).
	SyncControllerCPUMS float64 `json:"sync_controller_cpu_ms"`
	SyncClientsCPUMS    float64 `json:"sync_clients_cpu_ms"`
	SyncClientsSysMS    float64 `json:"sync_clients_sys_ms"`
	SyncClientsFaults   int64   `json:"sync_clients_faults"`
	THP                 string  `json:"thp"`
}

func runController(cfg config, log *slog.Logger) error {
	if cfg.pods <= 0 || cfg.services <= 0 || cfg.clients <= 0 || cfg.changes <= 0 {
		return fmt.Errorf("-pods, -services, -clients and -changes must be positive")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dir, err := os.MkdirTemp("", "bench-controller")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ca, err := identity.NewCA(identity.CAOptions{})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "root.pem"), ca.RootPEM(), 0o600); err != nil {
		return err
	}
	nodes := make([]string, cfg.clients)
	for i := range nodes {
		nodes[i] = nodeName(i)
	}
	if err := caserver.EnsureNodeTokens(filepath.Join(dir, "tokens"), nodes...); err != nil {
		return err
	}

	var (
		gen xds.Generator
		// change makes change number i to pod idx and returns the workload's resource name
		// and the version the proxies must reach ("*": any new version).
		prepare func(idx, i int) (name, version string)
		change  func(idx, i int) error
	)
	switch cfg.generator {
	case "model":
		mm, err := newModelMesh(cfg.pods, cfg.services, cfg.clients)
		if err != nil {
			return err
		}
		gen = mm
		prepare = func(idx, i int) (string, string) {
			p := mm.pod(idx, i)
			return model.WorkloadUID(model.DefaultCluster, p.Namespace, p.Name), "*"
		}
		change = func(idx, i int) error { _, err := mm.change(idx, i); return err }
	case "simple":
		m := newMesh(cfg.pods, cfg.services, cfg.clients)
		gen = m
		prepare = func(idx, i int) (string, string) {
			return workload(idx, cfg.services, cfg.clients, i).GetUid(), strconv.Itoa(i)
		}
		change = func(idx, i int) error { m.change(idx, cfg.services, cfg.clients, i); return nil }
	default:
		return fmt.Errorf("unknown -generator %q", cfg.generator)
	}
	srv, err := xds.NewServer(xds.Options{
		Generator:     gen,
		Authenticator: &caserver.TokenDir{Dir: filepath.Join(dir, "tokens")},
		Logger:        log,
		Registry:      prometheus.NewRegistry(),
	})
	if err != nil {
		return err
	}
	mgr := identity.NewManager(identity.ManagerOptions{Signer: ca, Logger: log})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(caserver.ServerTLS(mgr, xdsclient.ControllerID(ca.TrustDomain())))),
		grpc.InitialWindowSize(windowSize), grpc.InitialConnWindowSize(connWindowSize))
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer gs.Stop()
	defer cancel()
	wg.Go(func() { _ = mgr.Run(ctx) })
	wg.Go(func() { _ = srv.Run(ctx) })
	wg.Go(func() { _ = gs.Serve(lis) })
	// The serving certificate is ready before the clock starts.
	if _, err := mgr.Certificate(ctx, xdsclient.ControllerID(ca.TrustDomain())); err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.CommandContext(ctx, self, "-role=clients", "-addr="+lis.Addr().String(), "-dir="+dir,
		"-clients="+strconv.Itoa(cfg.clients), "-pods="+strconv.Itoa(cfg.pods), "-services="+strconv.Itoa(cfg.services),
		"-cpuprofile="+os.Getenv("BENCH_CLIENTS_CPUPROFILE"), "-decode-resources="+strconv.FormatBool(cfg.decodeResources))
	child.Stderr = os.Stderr
	in, err := child.StdinPipe()
	if err != nil {
		return err
	}
	outPipe, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	use0 := usage()
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { in.Close(); _ = child.Wait() }()
	out := bufio.NewScanner(outPipe)
	readLine := func() (string, error) {
		if !out.Scan() {
			if err := out.Err(); err != nil {
				return "", err
			}
			return "", io.ErrUnexpectedEOF
		}
		return out.Text(), nil
	}

	line, err := readLine()
	if err != nil {
		return fmt.Errorf("clients: %w", err)
	}
	res := result{Pods: cfg.pods, Services: cfg.services, Clients: cfg.clients, THP: thpSetting()}
	if _, err := fmt.Sscanf(line, "synced %g %g %g %d", &res.FullSyncMS, &res.SyncClientsCPUMS, &res.SyncClientsSysMS, &res.SyncClientsFaults); err != nil {
		return fmt.Errorf("clients: unexpected %q: %w", line, err)
	}
	res.SyncControllerCPUMS = ms(usage().sub(use0).cpu())
	fmt.Fprintf(os.Stderr, "full sync of %d clients: %.1f ms wall, %.0f ms of controller CPU\n",
		cfg.clients, res.FullSyncMS, res.SyncControllerCPUMS)

	lat := make([]float64, 0, cfg.changes)
	for i := range cfg.changes {
		idx := (i * 7919) % cfg.pods
		name, version := prepare(idx, i+2)
		if _, err := fmt.Fprintf(in, "expect %s %s\n", name, version); err != nil {
			return err
		}
		if line, err := readLine(); err != nil || line != "ok" {
			return fmt.Errorf("clients: %q, %v", line, err)
		}
		start := time.Now()
		if err := change(idx, i+2); err != nil {
			return err
		}
		srv.Push()
		if line, err := readLine(); err != nil || line != "done" {
			return fmt.Errorf("clients: %q, %v", line, err)
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	fmt.Fprintln(in, "quit")
	slices.Sort(lat)
	res.ChangeP50MS = percentile(lat, 0.50)
	res.ChangeP99MS = percentile(lat, 0.99)
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		res.RSSMB = float64(ru.Maxrss) / 1024 // kilobytes on Linux
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1)*p + 0.5)
	return sorted[i]
}

// rusage is what a process has used so far.
type rusage struct {
	user, sys time.Duration
	faults    int64 // minor and major page faults
}

func usage() rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return rusage{}
	}
	return rusage{user: time.Duration(ru.Utime.Nano()), sys: time.Duration(ru.Stime.Nano()), faults: ru.Minflt + ru.Majflt}
}

func (u rusage) sub(v rusage) rusage {
	return rusage{user: u.user - v.user, sys: u.sys - v.sys, faults: u.faults - v.faults}
}

func (u rusage) cpu() time.Duration { return u.user + u.sys }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// thpSetting is the machine's transparent huge page mode (always, madvise or never), the word
// in brackets of /sys/kernel/mm/transparent_hugepage/enabled; "" when unknown.
func thpSetting() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(b), "[")
	mode, _, ok2 := strings.Cut(rest, "]")
	if !ok || !ok2 {
		return ""
	}
	return mode
}
