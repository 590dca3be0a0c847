// Package health serves a proxy's readiness the way Istio's ztunnel does: GET /healthz/ready
// on port 15021 answers 200 "ready" once config and certificates are in, 503 with the reason
// before. ztunnel and the waypoint share it.
package health

import "net/http"

// ReadyHandler answers GET /healthz/ready from ready: nil is ready, an error says why not.
func ReadyHandler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
