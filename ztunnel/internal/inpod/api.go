package inpod

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"

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
			code := http.StatusUnprocessableEntity
			if errors.Is(err, ErrHandedOver) {
				code = http.StatusServiceUnavailable
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /v1/pods/{uid}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Remove(r.Context(), r.PathValue("uid")); errors.Is(err, ErrHandedOver) {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/pods", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.Pods())
	})
	mux.HandleFunc("POST /v1/handover", func(w http.ResponseWriter, r *http.Request) {
		regs := m.Handover()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(regs)
	})
	mux.HandleFunc("GET /v1/peer", func(w http.ResponseWriter, r *http.Request) {
		src, err1 := netip.ParseAddrPort(r.URL.Query().Get("src"))
		dst, err2 := netip.ParseAddrPort(r.URL.Query().Get("dst"))
		if err := errors.Join(err1, err2); err != nil {
			http.Error(w, "peer lookup needs src and dst as ip:port: "+err.Error(), http.StatusBadRequest)
			return
		}
		var out nodeapi.Peer
		if p, ok := m.node.Peer(src, dst); ok {
			out.MTLS = p.MTLS
			if !p.Identity.IsZero() {
				out.Identity = p.Identity.String()
			}
		} else if out, ok = m.predecessorPeer(r.Context(), src, dst); !ok {
			http.Error(w, "no inbound connection from "+src.String()+" to "+dst.String(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	return mux
}
