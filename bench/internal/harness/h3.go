package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"ambit.dev/controller/lab"
)

// tunnelLabel asks the controller for HBONE over HTTP/3 to a namespace's workloads
// (ambit-l4-h3); the ztunnels report that they serve it.
const (
	tunnelLabel = "ambit.dev/tunnel-protocol"
	tunnelH3    = "hbone-h3"
)

// useH3 labels the bench namespace for HBONE over HTTP/3, or removes the label, then waits
// until the client's requests are carried the way asked: its ztunnel's
// istio_tcp_connections_opened_total with reporter="source" grows for tunnel_protocol
// HBONE_H3 (on) or HBONE (off). The wait also catches a silent fallback to HTTP/2, which
// would otherwise be measured under the wrong name.
func (r *runner) useH3(ctx context.Context, url string, on bool) error {
	var v *string
	if on {
		s := tunnelH3
		v = &s
	}
	if err := lab.SetNamespaceLabel(r.cfg.LabDir, r.server.Namespace, tunnelLabel, v); err != nil {
		return err
	}
	metrics := ""
	for _, n := range r.state.Nodes {
		if n.Name == r.client.Node {
			metrics = "http://" + n.MetricsAddr + "/metrics"
		}
	}
	if metrics == "" {
		return fmt.Errorf("no lab node %q for the client pod", r.client.Node)
	}
	want := "HBONE"
	if on {
		want = "HBONE_H3"
	}
	client := lab.Client(r.client.NetNS, 3*time.Second)
	return waitFor(ctx, 30*time.Second, "the client's tunnels to use "+want, func() error {
		before, err := scrape(metrics, want)
		if err != nil {
			return err
		}
		// A new connection each time: a pooled keep-alive one would not show.
		client.CloseIdleConnections()
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		after, err := scrape(metrics, want)
		if err != nil {
			return err
		}
		if after <= before {
			return fmt.Errorf("no new connection with tunnel_protocol=%s", want)
		}
		return nil
	})
}

func scrape(url, tunnel string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return sourceConnsOpened(resp.Body, tunnel)
}

// sourceConnsOpened sums istio_tcp_connections_opened_total{reporter="source"} of tunnel
// protocol tunnel on a ztunnel's metrics page.
func sourceConnsOpened(page io.Reader, tunnel string) (float64, error) {
	var total float64
	sc := bufio.NewScanner(page)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "istio_tcp_connections_opened_total{") || !strings.Contains(line, `reporter="source"`) ||
			!strings.Contains(line, `tunnel_protocol="`+tunnel+`"`) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			total += v
		}
	}
	return total, sc.Err()
}
