package proxyhost

import (
	"fmt"
	"net/http"

	"ambit.dev/proto/dump"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ReadyHandler answers GET /healthz/ready from ready: nil is ready ("ready", 200), an error
// says why not (503).
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

// AllReady is ready when every check is, in order: the first error is the reason.
func AllReady(checks ...func() error) func() error {
	return func() error {
		for _, c := range checks {
			if err := c(); err != nil {
				return err
			}
		}
		return nil
	}
}

// CertsServing is ready while every certificate that certs lists serves (dump.CertState's
// Serving): ztunnel's, for the identities of its pods.
func CertsServing(certs func() []dump.CertInfo) func() error {
	return func() error {
		for _, c := range certs() {
			if !c.State.Serving() {
				return fmt.Errorf("certificate for %s is %s", c.ID, c.State)
			}
		}
		return nil
	}
}

// CertServing is ready once id's certificate is among certs and serves: the waypoint's, for
// its one identity.
func CertServing(certs func() []dump.CertInfo, id func() spiffeid.ID) func() error {
	return func() error {
		want := id()
		for _, c := range certs() {
			if c.ID == want && c.State.Serving() {
				return nil
			}
		}
		return fmt.Errorf("no certificate for %s yet", want)
	}
}
