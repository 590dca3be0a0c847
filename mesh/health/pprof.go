package health

import (
	"net/http"
	"net/http/pprof"
)

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
