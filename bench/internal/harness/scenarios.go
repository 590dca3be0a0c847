package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"ambit.dev/bench/internal/peer"
	"ambit.dev/bench/internal/proc"
	"ambit.dev/bench/internal/report"
	"ambit.dev/controller/lab"
)

// AllScenarios in the order a run measures them.
var AllScenarios = append([]string{report.Direct, report.AmbitL4, report.AmbitL4H3, report.AmbitL7}, report.Peers...)

// Ports of the benchmark's own server in the server pod, and of the peers' pairs (one runs
// at a time).
const (
	httpPort      = 8080
	bulkPort      = 9100
	peerHTTPLocal = 28080 // client side, loopback of the client pod
	peerBulkLocal = 29100
	peerHTTPTLS   = 28443 // server side, the pod's address
	peerBulkTLS   = 29443
)

// errSkip marks a scenario that cannot run yet; the run goes on without it and the doc
// says why.
type errSkip struct{ reason string }

func (e errSkip) Error() string { return e.reason }

// endpoints is where the load of a scenario goes and which proxies carry it.
type endpoints struct {
	url, bulk string
	proxies   []int
	// waypoint is the waypoint's pid in ambit-l7 (also among proxies), measured apart too.
	waypoint int
	teardown func(context.Context) error
}

func (r *runner) setup(ctx context.Context, name string) (endpoints, error) {
	direct := endpoints{
		url:      fmt.Sprintf("http://%s/", net.JoinHostPort(r.server.IP, strconv.Itoa(httpPort))),
		bulk:     net.JoinHostPort(r.server.IP, strconv.Itoa(bulkPort)),
		teardown: func(context.Context) error { return nil },
	}
	switch name {
	case report.Direct:
		return direct, r.enrol(ctx, false)
	case report.AmbitL4:
		if err := r.enrol(ctx, true); err != nil {
			return endpoints{}, err
		}
		e := direct
		for _, n := range r.state.Nodes {
			e.proxies = append(e.proxies, n.Ztunnel.PID)
		}
		e.teardown = func(ctx context.Context) error { return r.enrol(ctx, false) }
		return e, nil
	case report.AmbitL4H3:
		if err := r.enrol(ctx, true); err != nil {
			return endpoints{}, err
		}
		if err := r.useH3(ctx, direct.url, true); err != nil {
			return endpoints{}, err
		}
		e := direct
		for _, n := range r.state.Nodes {
			e.proxies = append(e.proxies, n.Ztunnel.PID)
		}
		e.teardown = func(ctx context.Context) error {
			if err := r.useH3(ctx, direct.url, false); err != nil {
				return err
			}
			return r.enrol(ctx, false)
		}
		return e, nil
	case report.AmbitL7:
		if err := r.enrol(ctx, true); err != nil {
			return endpoints{}, err
		}
		wp, err := r.bindWaypoint(ctx, direct.url, true)
		if err != nil {
			return endpoints{}, err
		}
		e := direct
		for _, n := range r.state.Nodes {
			e.proxies = append(e.proxies, n.Ztunnel.PID)
		}
		e.proxies = append(e.proxies, wp.Proc.PID)
		e.waypoint = wp.Proc.PID
		e.teardown = func(ctx context.Context) error {
			if _, err := r.bindWaypoint(ctx, direct.url, false); err != nil {
				return err
			}
			return r.enrol(ctx, false)
		}
		return e, nil
	}
	if kind, ok := peer.Kinds[name]; ok {
		if err := r.enrol(ctx, false); err != nil {
			return endpoints{}, err
		}
		return r.startPeer(ctx, kind)
	}
	return endpoints{}, fmt.Errorf("unknown scenario %q", name)
}

// benchWaypoint names the waypoint of ambit-l7: a service-account waypoint for the server.
const benchWaypoint = "bench-wp"

// bindWaypoint runs the waypoint (once; it stays up between rounds) and binds the server's
// service account to it, or unbinds it, then waits until the client's requests go through
// the waypoint (or no longer do), as its request counter shows.
func (r *runner) bindWaypoint(ctx context.Context, url string, on bool) (*lab.WaypointState, error) {
	wp, err := lab.ApplyWaypoint(ctx, lab.Options{Dir: r.cfg.LabDir, BinDir: r.cfg.BinDir, Ambitctl: filepath.Join(r.cfg.BinDir, "ambitctl")},
		lab.WaypointSpec{Name: benchWaypoint, Namespace: r.server.Namespace, For: "serviceaccount", Node: r.server.Node})
	if err != nil {
		return nil, err
	}
	file := filepath.Join(r.cfg.LabDir, "bench-waypoint-binding.yaml")
	if on {
		sa := fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: %s\n  namespace: %s\n  labels:\n    ambit.dev/use-waypoint: %s\n",
			r.server.ServiceAccount, r.server.Namespace, benchWaypoint)
		if err := os.WriteFile(file, []byte(sa), 0o644); err != nil {
			return nil, err
		}
		if _, err := lab.Apply(r.cfg.LabDir, file); err != nil {
			return nil, err
		}
	} else if err := lab.Delete(r.cfg.LabDir, file); err != nil {
		return nil, err
	}
	client := lab.Client(r.client.NetNS, 2*time.Second)
	metrics := "http://" + net.JoinHostPort(wp.IP, "15020") + "/metrics"
	err = waitFor(ctx, 30*time.Second, "traffic through the waypoint to follow the binding", func() error {
		before, err := waypointRequests(metrics)
		if err != nil {
			return err
		}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		after, err := waypointRequests(metrics)
		if err != nil {
			return err
		}
		if via := after > before; via != on {
			return fmt.Errorf("through the waypoint: %v, want %v", via, on)
		}
		return nil
	})
	return wp, err
}

// waypointRequests sums istio_requests_total on a waypoint's metrics page.
func waypointRequests(url string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var total float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "istio_requests_total{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			total += v
		}
	}
	return total, sc.Err()
}

// enrol puts the bench namespace in the mesh or takes it out, through ambitctl as a user
// would, and waits until both pods' ztunnels agree.
func (r *runner) enrol(ctx context.Context, on bool) error {
	verb := "disable"
	if on {
		verb = "enable"
	}
	if r.enrolled == on {
		return nil
	}
	out, err := exec.CommandContext(ctx, filepath.Join(r.cfg.BinDir, "ambitctl"), "namespace", verb, r.client.Namespace,
		"--lab-dir", r.cfg.LabDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ambitctl namespace %s: %v\n%s", verb, err, out)
	}
	if err := lab.WaitCaptured(ctx, r.cfg.LabDir, r.client.Namespace, on, 30*time.Second); err != nil {
		// what the lab's state and its ztunnels said at the end, for the next reader
		if st, serr := lab.GetStatus(ctx, r.cfg.LabDir); serr == nil {
			var pods []string
			for _, p := range st.Pods {
				pods = append(pods, fmt.Sprintf("%s/%s captured=%v (%s)", p.Namespace, p.Name, p.Captured, p.Reason))
			}
			return fmt.Errorf("%w; lab status: %d nodes, pods %v", err, len(st.Nodes), pods)
		}
		return err
	}
	r.enrolled = on
	return nil
}

// startPeer runs a peer's pair: the server side in the server pod, the client side in the
// client pod, with SVIDs of the lab's CA; ready when a connection through both is answered.
func (r *runner) startPeer(ctx context.Context, kind peer.Kind) (endpoints, error) {
	bin, err := kind.Path(r.cfg.BinDir)
	if err != nil {
		return endpoints{}, errSkip{fmt.Sprintf("%s: %v (make setup installs it)", kind.Scenario, err)}
	}
	dir := filepath.Join(r.cfg.LabDir, "bench-"+kind.Scenario)
	caDir := filepath.Join(r.cfg.LabDir, "ca")
	ca := filepath.Join(caDir, "root-cert.pem")
	serverName := r.server.ServiceAccount + "." + r.server.Namespace
	clientPEM, serverPEM := filepath.Join(dir, "client.pem"), filepath.Join(dir, "server.pem")
	if _, err := peer.Issue(caDir, r.client.Namespace, r.client.ServiceAccount, r.client.ServiceAccount+"."+r.client.Namespace, clientPEM); err != nil {
		return endpoints{}, err
	}
	serverID, err := peer.Issue(caDir, r.server.Namespace, r.server.ServiceAccount, serverName, serverPEM)
	if err != nil {
		return endpoints{}, err
	}
	hostPort := func(port int) string { return net.JoinHostPort(r.server.IP, strconv.Itoa(port)) }
	client := peer.Side{Client: true, CertFile: clientPEM, CAFile: ca, ServerName: serverName, ServerID: serverID, Dir: filepath.Join(dir, "client"), Tunnels: []peer.Tunnel{
		{Name: "http", Listen: fmt.Sprintf("127.0.0.1:%d", peerHTTPLocal), Upstream: hostPort(peerHTTPTLS), Authority: hostPort(httpPort)},
		{Name: "bulk", Listen: fmt.Sprintf("127.0.0.1:%d", peerBulkLocal), Upstream: hostPort(peerBulkTLS), Authority: hostPort(bulkPort)},
	}}
	server := peer.Side{CertFile: serverPEM, CAFile: ca, Dir: filepath.Join(dir, "server"), Tunnels: []peer.Tunnel{
		{Name: "http", Listen: fmt.Sprintf(":%d", peerHTTPTLS), Upstream: fmt.Sprintf("127.0.0.1:%d", httpPort)},
		{Name: "bulk", Listen: fmt.Sprintf(":%d", peerBulkTLS), Upstream: fmt.Sprintf("127.0.0.1:%d", bulkPort)},
	}}
	var procs []*process
	stopAll := func(context.Context) error {
		var errs []error
		for _, p := range procs {
			errs = append(errs, p.stop())
		}
		return errors.Join(errs...)
	}
	for _, s := range []struct {
		side peer.Side
		pod  *lab.PodState
	}{{server, r.server}, {client, r.client}} {
		text, err := kind.Render(s.side)
		if err == nil {
			err = os.MkdirAll(s.side.Dir, 0o755)
		}
		if err != nil {
			_ = stopAll(ctx)
			return endpoints{}, err
		}
		file := filepath.Join(s.side.Dir, kind.Binary+".conf")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			_ = stopAll(ctx)
			return endpoints{}, err
		}
		p, err := r.startIn(s.pod, kind.Scenario+"-"+filepath.Base(s.side.Dir), bin, kind.Args(file)...)
		if err != nil {
			_ = stopAll(ctx)
			return endpoints{}, err
		}
		procs = append(procs, p)
	}
	e := endpoints{
		url:      fmt.Sprintf("http://127.0.0.1:%d/", peerHTTPLocal),
		bulk:     fmt.Sprintf("127.0.0.1:%d", peerBulkLocal),
		teardown: stopAll,
	}
	// ready when a request through both goes through
	err = waitFor(ctx, 10*time.Second, kind.Scenario+" pair", func() error {
		for _, p := range procs {
			if p.exited() {
				return fmt.Errorf("%s exited; see %s", kind.Binary, p.log)
			}
		}
		c, err := lab.DialIn(r.client.NetNS, e.bulk, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	})
	if err != nil {
		_ = stopAll(ctx)
		return endpoints{}, err
	}
	for _, p := range procs {
		e.proxies = append(e.proxies, p.cmd.Process.Pid)
		if kind.Forks {
			e.proxies = append(e.proxies, proc.Children(p.cmd.Process.Pid)...)
		}
	}
	return e, nil
}
