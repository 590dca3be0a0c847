// Command bench-controller measures the controller's configuration push at scale: a mesh of
// -pods workloads and -services Services pushed by the delta xDS server to -clients proxies
// over TLS gRPC on loopback, each proxy holding the whole mesh as ztunnels do. It lives
// beside the xDS server it measures because it drives the controller's internal packages
// (xds, model, caserver); `make bench-controller` builds it into bin/bench-controller.
//
// The controller side (the xDS server and its Generator) runs in this process; the proxies run
// in a child process (this binary with -role=clients), so the peak RSS reported is the
// controller's alone. With -generator=model (the default) the Generator is the controller's
// own model (model.Index) built from Kubernetes objects (50 enrolled namespaces, the Services,
// their pods), and a change is a pod relabel committed to it; -generator=simple uses prebuilt
// resources instead and measures the push path alone. The proxies are the real proxy-side
// client (mesh/xdsclient): each decodes every response it receives and holds every resource (name,
// version and body), but leaves the bodies in wire form (SkipDecode): a hundred of them share
// this machine's cores, where in a mesh each decodes on its own node; for the same reason
// their gRPC codec decodes the responses by hand, in a few allocations (codec.go).
// -decode-resources makes them unmarshal every body into its Go type too, which measures
// mostly the simulation: a million Workload bodies decoded on two cores.
//
// The last line of output is one JSON object:
//
//	{"pods":…,"services":…,"clients":…,"full_sync_ms":…,"change_p50_ms":…,"change_p99_ms":…,"rss_mb":…,
//	 "sync_controller_cpu_ms":…,"sync_clients_cpu_ms":…,"sync_clients_sys_ms":…,"sync_clients_faults":…,"thp":…}
//
// full_sync_ms is the time from starting the proxies until all hold the full config;
// change_*_ms is the time from one workload change (model edit and Push) until every proxy
// has applied it, over -changes changes; rss_mb is the controller process's peak RSS. The
// sync_* fields split the full sync's CPU between the controller and the clients, and give the
// clients' kernel time and page faults: on two shared cores the clients' CPU, not the
// controller's, sets full_sync_ms, and most of their kernel time is first touches of the
// memory that holds the config, which the machine's transparent huge page setting (thp)
// decides (docs/benchmarks.md, "Full sync: what the time is made of").
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.role, "role", "controller", "controller (the benchmark) or clients (the child process it starts)")
	flag.IntVar(&cfg.pods, "pods", 10000, "workloads in the mesh")
	flag.IntVar(&cfg.services, "services", 1000, "Services in the mesh")
	flag.IntVar(&cfg.clients, "clients", 100, "proxies connected over xDS")
	flag.IntVar(&cfg.changes, "changes", 200, "pod changes to time")
	flag.StringVar(&cfg.generator, "generator", "model", "model (the controller's model.Index fed with Kubernetes objects) or simple (prebuilt resources)")
	flag.BoolVar(&cfg.decodeResources, "decode-resources", false, "clients unmarshal every resource body into its Go type, as a proxy does, instead of holding it in wire form")
	flag.StringVar(&cfg.addr, "addr", "", "clients role: controller address")
	flag.StringVar(&cfg.dir, "dir", "", "clients role: folder with the root certificate and node tokens")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process to the file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-controller:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var err error
	switch cfg.role {
	case "controller":
		err = runController(cfg, log)
	case "clients":
		err = runClients(cfg, log)
	default:
		err = fmt.Errorf("unknown -role %q", cfg.role)
	}
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench-controller:", err)
		os.Exit(1)
	}
}

type config struct {
	role, generator                  string
	pods, services, clients, changes int
	addr, dir                        string
	decodeResources                  bool
}
