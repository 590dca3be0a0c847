package proxyhost

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"ambit.dev/mesh/hbone"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns the registry a proxy's metrics go to, with Go's runtime, the
// process's collectors and the HTTP/3 loss shield's counters already in.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The HTTP/3 tunnels' loss shield (mesh/hbone/h3loss.go), process-wide counters.
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ambit_hbone_h3_duplicated_packets_total",
			Help: "Short QUIC packets of HTTP/3 tunnels sent a second time because the tunnel measured packet loss.",
		}, func() float64 { return float64(hbone.ReadH3LossStats().DuplicatedPackets) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ambit_hbone_h3_loss_shielded_connections",
			Help: "HTTP/3 tunnel connections sending their short packets twice now.",
		}, func() float64 { return float64(hbone.ReadH3LossStats().ShieldedPeers) }),
	)
	return reg
}

// AdminHandler serves GET /config_dump, dump's result as indented JSON (a proto/dump type),
// and Go's profiles (RegisterPprof).
func AdminHandler(dump func() any) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /config_dump", DumpHandler(dump))
	// Go's profiles, for the figures in docs/benchmarks.md: the admin listener is loopback
	// only, like Envoy's and ztunnel's admin.
	RegisterPprof(mux)
	return mux
}

// DumpHandler answers with dump's result as indented JSON; dump runs for every request.
func DumpHandler(dump func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(dump())
	})
}

// RegisterPprof serves Go's profiles under /debug/pprof/ on mux, the admin listener of
// ztunnel and the waypoint (keep it on loopback or inside the pod, like Envoy's admin):
// `go tool pprof http://<admin>/debug/pprof/profile` for CPU, .../heap for memory.
func RegisterPprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
