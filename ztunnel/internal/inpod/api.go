package inpod

import (
	"encoding/json"
	"io"
	"net/http"

	"ambit.dev/proto/nodeapi"
)

// Handler serves the node API (package nodeapi describes it).
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/pods", func(w http.ResponseWriter, r *http.Request) {
		var reg nodeapi.Registration
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&reg); err != nil {
			http.Error(w, "bad registration: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := m.Add(r.Context(), reg); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /v1/pods/{uid}", func(w http.ResponseWriter, r *http.Request) {
		_ = m.Remove(r.Context(), r.PathValue("uid"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/pods", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.Pods())
	})
	return mux
}
