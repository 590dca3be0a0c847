// Package inpod keeps the pods ztunnel serves on its node: the node-side API through which
// the lab, or a Kubernetes CNI plugin, hands a pod over (its UID and network namespace), the
// capture and per-pod proxy for each, and a record on disk so that after a restart ztunnel
// gets back every pod it served. A pod whose workload is not (or no longer) in ambient mode
// stays registered but uncaptured, so enabling its namespace later captures it again.
//
// A new ztunnel takes the pods over from a running one without dropping a connection
// (TakeOver on the new side, Handover and Drain on the old; package nodeapi describes the
// protocol). Manager.Run brings the pods back at start and keeps them reconciled; a Handover
// is one ztunnel's part in that exchange around the node API socket: taking over from a
// predecessor, serving the socket, waiting for a successor at shutdown, draining.
package inpod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"ambit.dev/mesh/memreturn"
	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/nodeapi"
	"ambit.dev/ztunnel/internal/capture"
	"ambit.dev/ztunnel/internal/proxy"
)

// Capturer installs and removes a pod's redirection and opens its sockets; package
// capture in production.
type Capturer interface {
	Install(ctx context.Context, netns string) error
	Remove(ctx context.Context, netns string) error
	// Check reports whether the namespace's rules are exactly what Install wrote; seen is
	// what the previous Check of the same namespace returned (the zero value: nothing).
	Check(ctx context.Context, netns string, seen capture.Seen) (bool, capture.Seen, error)
	Net(netns string) proxy.Net
}

// ruleCheckSpacing is the least time between two checks of one pod's rules on
// reconciliation; a config push per second must not mean a dozen iptables runs per pod.
// CheckCapture checks regardless.
const ruleCheckSpacing = 5 * time.Second

// Manager owns the registered pods.
type Manager struct {
	// Synced reports whether the first complete config is in; Run restores no pod before.
	// Nil: at once. Set before Run.
	Synced func() bool
	// CaptureCheck is how often Run checks every captured pod's rules (CheckCapture); never
	// when zero or negative. Set before Run.
	CaptureCheck time.Duration

	node    *proxy.Node
	state   *state.State
	capture Capturer
	file    string
	log     *slog.Logger

	// checkSpacing is ruleCheckSpacing; tests shorten it.
	checkSpacing time.Duration

	recMu sync.Mutex // one reconciliation at a time
	mu    sync.Mutex
	pods  map[string]*entry
	// closed is set by Close: from then on nothing starts a pod's proxy again (a config
	// push during shutdown must not bring back what Close closed).
	closed bool

	// handedOver is closed when the pods are handed over to a successor (or released for
	// shutdown): from then on this Manager changes nothing, neither pods nor rules, which
	// belong to the successor.
	handedOver chan struct{}
	handOnce   sync.Once

	// pred reaches the predecessor, while it drains, over a connection opened before its
	// socket path was taken over: peer lookups of the connections it still carries.
	predMu sync.Mutex
	pred   *nodeapi.Client

	// handover, when set (NewHandover), takes the pods over from a predecessor in Run.
	handover *Handover
}

// ErrHandedOver is returned by Add and Remove once the pods belong to a successor.
var ErrHandedOver = errors.New("ztunnel is handing over to a new instance; retry")

type entry struct {
	reg    nodeapi.Registration
	proxy  *proxy.Pod
	uid    string
	reason string
	// provisional is the pod's workload as its registration describes it (a CNI ADD with
	// Ambient set), captured from until the controller's Workload for the pod arrives; nil
	// once it has.
	provisional *configv1.Workload
	// lastCheck is when the pod's rules were last compared with what Install wrote;
	// checkFailed keeps a failing check or repair to one log line until it succeeds.
	lastCheck   time.Time
	checkFailed bool
	// seen is what the last check found, so that the next one can skip comparing rules
	// that cannot have changed (capture.Check).
	seen capture.Seen
}

// NewManager returns a Manager that records its pods in stateDir (empty: not persisted).
func NewManager(node *proxy.Node, st *state.State, c Capturer, stateDir string, log *slog.Logger) *Manager {
	m := &Manager{node: node, state: st, capture: c, log: log, pods: map[string]*entry{}, handedOver: make(chan struct{}), checkSpacing: ruleCheckSpacing}
	if stateDir != "" {
		m.file = filepath.Join(stateDir, "pods.json")
	}
	return m
}

// Restore re-registers the pods recorded by a previous run.
func (m *Manager) Restore(ctx context.Context) error {
	if m.file == "" {
		return nil
	}
	b, err := os.ReadFile(m.file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pod records: %w", err)
	}
	var regs []nodeapi.Registration
	if err := json.Unmarshal(b, &regs); err != nil {
		return fmt.Errorf("read pod records %s: %w", m.file, err)
	}
	for _, r := range regs {
		if _, err := os.Stat(r.NetNS); err != nil {
			m.log.Info("pod gone while ztunnel was down", "uid", r.UID, "netns", r.NetNS)
			continue
		}
		if err := m.Add(ctx, r); err != nil {
			m.log.Warn("restore pod failed", "uid", r.UID, "err", err)
		}
	}
	m.releaseOrphans(ctx)
	return nil
}

// releaseOrphans removes the rules that a previous ztunnel left in pods whose workload is no
// longer in ambient mode: nobody listens for their redirected traffic any more.
func (m *Manager) releaseOrphans(ctx context.Context) {
	m.recMu.Lock()
	defer m.recMu.Unlock()
	if m.isHandedOver() {
		return
	}
	m.mu.Lock()
	var orphans []*entry
	for _, e := range m.pods {
		if e.proxy != nil {
			continue
		}
		if w, ok := m.state.WorkloadByUID(e.uid); ok && w.GetTunnelProtocol() == configv1.TunnelProtocol_NONE {
			orphans = append(orphans, e)
		}
	}
	m.mu.Unlock()
	for _, e := range orphans {
		if err := m.capture.Remove(ctx, e.reg.NetNS); err != nil {
			m.log.Info("remove capture", "uid", e.uid, "err", err)
		}
	}
}

// Add registers a pod and captures it if its workload is in ambient mode. Adding a pod
// twice is harmless.
func (m *Manager) Add(ctx context.Context, r nodeapi.Registration) error {
	if r.UID == "" || r.NetNS == "" {
		return errors.New("pod registration needs uid and netns")
	}
	if _, err := os.Stat(r.NetNS); err != nil {
		m.log.Warn("pod registration refused: network namespace not found", "uid", r.UID, "netns", r.NetNS, "err", err)
		return fmt.Errorf("pod %s: network namespace: %w", r.UID, err)
	}
	// Under recMu, so that a registration either is in the list Handover gives the
	// successor or is refused.
	m.recMu.Lock()
	if m.isHandedOver() {
		m.recMu.Unlock()
		return ErrHandedOver
	}
	m.mu.Lock()
	if e, ok := m.pods[r.UID]; ok && e.reg.NetNS == r.NetNS {
		m.mu.Unlock()
		m.recMu.Unlock()
		m.log.Info("pod registered already; nothing to do", "uid", r.UID, "netns", r.NetNS)
		m.reconcile(ctx, false)
		return nil
	}
	for _, e := range m.pods {
		if e.reg.NetNS == r.NetNS && e.uid != r.UID {
			m.mu.Unlock()
			m.recMu.Unlock()
			// Its listeners would open beside the other pod's on the same ports.
			m.log.Warn("pod registration refused: network namespace belongs to another pod", "uid", r.UID, "netns", r.NetNS, "other_uid", e.uid)
			return fmt.Errorf("pod %s: network namespace %s is registered for pod %s", r.UID, r.NetNS, e.uid)
		}
	}
	prov, err := provisionalWorkload(r)
	if err != nil {
		m.mu.Unlock()
		m.recMu.Unlock()
		m.log.Warn("pod registration refused", "uid", r.UID, "netns", r.NetNS, "err", err)
		return fmt.Errorf("pod %s: %w", r.UID, err)
	}
	old := m.pods[r.UID]
	e := &entry{reg: r, uid: r.UID, provisional: prov}
	m.pods[r.UID] = e
	m.mu.Unlock()
	if old != nil {
		m.stop(ctx, old)
	}
	m.save()
	m.recMu.Unlock()
	m.reconcile(ctx, false)
	if !r.Ambient {
		return nil
	}
	// The caller (a CNI ADD) starts the pod's containers once this returns: they must not
	// start outside the mesh.
	m.mu.Lock()
	captured, reason := e.proxy != nil, e.reason
	m.mu.Unlock()
	if !captured {
		return fmt.Errorf("pod %s registered but not captured: %s", r.UID, reason)
	}
	return nil
}

// provisionalWorkload is the workload a registration with Ambient describes, or nil without.
func provisionalWorkload(r nodeapi.Registration) (*configv1.Workload, error) {
	if !r.Ambient {
		return nil, nil
	}
	if r.Namespace == "" || r.Name == "" || r.ServiceAccount == "" || len(r.IPs) == 0 {
		return nil, errors.New("an ambient registration needs namespace, name, serviceAccount and ips")
	}
	w := &configv1.Workload{Uid: r.UID, Namespace: r.Namespace, Name: r.Name, ServiceAccount: r.ServiceAccount,
		TunnelProtocol: configv1.TunnelProtocol_HBONE}
	for _, s := range r.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("ips: %q is not an IP address", s)
		}
		w.Addresses = append(w.Addresses, ip.Unmap().AsSlice())
	}
	return w, nil
}

// Remove stops serving a pod and removes its rules; removing an unknown pod is harmless.
func (m *Manager) Remove(ctx context.Context, uid string) error {
	m.recMu.Lock()
	defer m.recMu.Unlock()
	if m.isHandedOver() {
		return ErrHandedOver
	}
	m.mu.Lock()
	e := m.pods[uid]
	delete(m.pods, uid)
	m.mu.Unlock()
	if e == nil {
		return nil
	}
	m.stop(ctx, e)
	m.save()
	return nil
}

// Reconcile brings every pod in line with the config: captured when its workload is in
// ambient mode, released when it is not or when its network namespace is gone. The rules of
// captured pods are checked too (at most every few seconds per pod) and repaired when they
// were changed behind ztunnel's back.
func (m *Manager) Reconcile(ctx context.Context) { m.reconcile(ctx, false) }

// CheckCapture is Reconcile with every captured pod's rules checked now; ztunnel calls it
// periodically.
func (m *Manager) CheckCapture(ctx context.Context) { m.reconcile(ctx, true) }

func (m *Manager) reconcile(ctx context.Context, checkNow bool) {
	m.recMu.Lock()
	defer m.recMu.Unlock()
	if m.isHandedOver() {
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	entries := make([]*entry, 0, len(m.pods))
	for _, e := range m.pods {
		entries = append(entries, e)
	}
	m.mu.Unlock()
	gone := false
	for _, e := range entries {
		if _, err := os.Stat(e.reg.NetNS); errors.Is(err, os.ErrNotExist) {
			// The pod went without a removal through the node API: its sockets are all
			// that keep the namespace alive.
			m.mu.Lock()
			p := e.proxy
			e.proxy = nil
			if m.pods[e.uid] == e {
				delete(m.pods, e.uid)
			}
			m.mu.Unlock()
			if p != nil {
				p.Close()
			}
			m.log.Warn("pod network namespace gone; pod released", "uid", e.uid, "netns", e.reg.NetNS)
			gone = true
			continue
		}
		w, ok := m.state.WorkloadByUID(e.uid)
		m.mu.Lock()
		if ok {
			e.provisional = nil // the controller's word from now on
		} else if e.provisional != nil {
			w, ok = e.provisional, true
		}
		m.mu.Unlock()
		enrolled := ok && w.GetTunnelProtocol() != configv1.TunnelProtocol_NONE
		m.mu.Lock()
		running := e.proxy != nil
		m.mu.Unlock()
		reason := ""
		switch {
		case enrolled && !running:
			if err := m.start(ctx, e, w); err != nil {
				reason = err.Error()
				m.log.Warn("capture pod failed", "uid", e.uid, "netns", e.reg.NetNS, "err", err)
			}
		case enrolled && running:
			if checkNow || time.Since(e.lastCheck) >= m.checkSpacing {
				m.repair(ctx, e, w)
			}
		case !enrolled && running:
			m.stop(ctx, e)
			reason = "workload not in ambient mode"
		case !ok:
			reason = "workload not in config yet"
		case !enrolled:
			reason = "workload not in ambient mode"
		}
		m.mu.Lock()
		e.reason = reason
		m.mu.Unlock()
	}
	if gone {
		m.save()
	}
}

// repair compares a captured pod's rules with what Install wrote and reinstalls them when
// someone changed them (a flushed chain, a deleted jump); Install puts nothing in twice.
func (m *Manager) repair(ctx context.Context, e *entry, w *configv1.Workload) {
	e.lastCheck = time.Now()
	pod := w.GetNamespace() + "/" + w.GetName()
	ok, seen, err := m.capture.Check(ctx, e.reg.NetNS, e.seen)
	e.seen = seen
	if err == nil && ok {
		e.checkFailed = false
		return
	}
	if err == nil {
		err = m.capture.Install(ctx, e.reg.NetNS)
	}
	if err == nil {
		// Still different right after installing: this iptables renders the rules in a
		// way the check does not expect. Say so once rather than "repair" every time.
		ok, e.seen, err = m.capture.Check(ctx, e.reg.NetNS, capture.Seen{})
		if err == nil && !ok {
			err = errors.New("rules differ from what was installed even right after installing them")
		}
	}
	if err != nil {
		if !e.checkFailed {
			e.checkFailed = true
			m.log.Warn("capture rules check failed", "uid", e.uid, "pod", pod, "netns", e.reg.NetNS, "err", err)
		}
		return
	}
	e.checkFailed = false
	m.log.Warn("capture rules changed behind ztunnel's back; repaired", "uid", e.uid, "pod", pod, "netns", e.reg.NetNS)
}

func (m *Manager) start(ctx context.Context, e *entry, w *configv1.Workload) error {
	if err := m.capture.Install(ctx, e.reg.NetNS); err != nil {
		return err
	}
	p, err := m.node.StartPod(w, m.capture.Net(e.reg.NetNS), proxy.Ports{})
	if err != nil {
		_ = m.capture.Remove(ctx, e.reg.NetNS)
		return err
	}
	m.mu.Lock()
	if m.closed { // Close came while this started
		m.mu.Unlock()
		p.Close()
		return errors.New("ztunnel is shutting down")
	}
	e.proxy, e.reason = p, ""
	m.mu.Unlock()
	m.log.Info("pod captured", "uid", e.uid, "pod", w.GetNamespace()+"/"+w.GetName(), "netns", e.reg.NetNS)
	// The check's first look at a pod's rules is a full one (iptables-save, the rules'
	// parser: Install has just moved the namespace's nf_tables generation); its later ones
	// only ask whether anything changed since. Taken here, it is part of the capture's
	// one-off work, whose code the give-back below unmaps; left to the periodic check, it
	// could come just after that give-back and keep its code resident under the pod's
	// traffic (docs/benchmarks.md).
	m.repair(ctx, e, w)
	memreturn.Settle() // the code only a capture runs need not stay resident
	return nil
}

// stop closes a pod's proxy and removes its rules. The pod counts as captured (Pods) until
// its rules are gone, so that whoever waits for the release sees the namespace as it was.
func (m *Manager) stop(ctx context.Context, e *entry) {
	m.mu.Lock()
	p := e.proxy
	m.mu.Unlock()
	if p == nil {
		return
	}
	defer func() {
		m.mu.Lock()
		if e.proxy == p {
			e.proxy = nil
		}
		m.mu.Unlock()
	}()
	p.Close()
	if _, err := os.Stat(e.reg.NetNS); errors.Is(err, os.ErrNotExist) {
		m.log.Info("pod released; its network namespace is gone", "uid", e.uid, "netns", e.reg.NetNS)
		return
	}
	if err := m.capture.Remove(ctx, e.reg.NetNS); err != nil {
		// The namespace may be gone with its pod, which removes the rules too.
		m.log.Info("remove capture", "uid", e.uid, "err", err)
	}
	m.log.Info("pod released", "uid", e.uid, "netns", e.reg.NetNS)
	memreturn.Settle()
}

// Pods lists the registered pods.
func (m *Manager) Pods() []nodeapi.PodStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]nodeapi.PodStatus, 0, len(m.pods))
	for _, e := range m.pods {
		out = append(out, nodeapi.PodStatus{Registration: e.reg, Captured: e.proxy != nil, Reason: e.reason})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Close releases every pod's sockets but leaves the rules in place, so that traffic keeps
// being redirected to the next ztunnel that takes the pods over.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, e := range m.pods {
		if e.proxy != nil {
			e.proxy.Close()
			e.proxy = nil
		}
	}
}

func (m *Manager) save() {
	if m.file == "" {
		return
	}
	m.mu.Lock()
	regs := make([]nodeapi.Registration, 0, len(m.pods))
	for _, e := range m.pods {
		regs = append(regs, e.reg)
	}
	m.mu.Unlock()
	sort.Slice(regs, func(i, j int) bool { return regs[i].UID < regs[j].UID })
	b, _ := json.MarshalIndent(regs, "", "  ")
	// A temporary file of its own: during a hand-over two ztunnels share the state dir.
	f, err := os.CreateTemp(filepath.Dir(m.file), ".pods-*.json")
	if err != nil {
		m.log.Warn("record pods", "err", err)
		return
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), m.file)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		m.log.Warn("record pods", "err", err)
	}
}

func (m *Manager) isHandedOver() bool {
	select {
	case <-m.handedOver:
		return true
	default:
		return false
	}
}

// HandedOver is closed once Handover has run: the pods belong to a successor, or to no one
// while this ztunnel shuts down.
func (m *Manager) HandedOver() <-chan struct{} { return m.handedOver }

// Handover gives the pods up: from now on nothing changes pods or rules; every pod's
// listeners accept what they have queued and close, while a successor's listeners on the
// same ports take the new connections. It returns the registered pods, for the successor to
// reconcile with. The connections open so far carry on until Drain.
func (m *Manager) Handover() []nodeapi.Registration {
	m.recMu.Lock() // no reconciliation or removal is half way
	first := false
	m.handOnce.Do(func() { close(m.handedOver); first = true })
	m.recMu.Unlock()
	m.mu.Lock()
	regs := make([]nodeapi.Registration, 0, len(m.pods))
	var running []*proxy.Pod
	for _, e := range m.pods {
		regs = append(regs, e.reg)
		if e.proxy != nil {
			running = append(running, e.proxy)
		}
	}
	m.mu.Unlock()
	sort.Slice(regs, func(i, j int) bool { return regs[i].UID < regs[j].UID })
	var wg sync.WaitGroup
	for _, p := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.StopAccepting()
		}()
	}
	wg.Wait()
	if first {
		m.log.Info("pods handed over; listeners closed", "pods", len(regs))
	}
	return regs
}

// Drain lets the connections of every pod finish until ctx ends, then closes what is left.
// The rules stay: they belong to the successor. Call it after Handover.
func (m *Manager) Drain(ctx context.Context) {
	m.Handover()
	m.mu.Lock()
	var running []*proxy.Pod
	for _, e := range m.pods {
		if e.proxy != nil {
			running = append(running, e.proxy)
			e.proxy = nil
		}
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Drain(ctx)
		}()
	}
	wg.Wait()
	m.log.Info("drained")
}

// TakeOver makes this Manager the successor of the ztunnel serving the node API at sock. It
// restores the pods recorded on disk and the ones that ztunnel holds, opening their
// listeners beside its own (which steers new connections here), then asks it to hand over
// and reconciles with the pods it held at that moment. Call it once the config is in, and
// serve the node API at sock only after it returns. When the old ztunnel does not answer the
// hand-over, the pods are served side by side with it and TakeOver returns the error.
func (m *Manager) TakeOver(ctx context.Context, sock string) error {
	old := nodeapi.NewClient(sock)
	if err := m.Restore(ctx); err != nil {
		m.log.Warn("restore pods", "err", err)
	}
	// Pods registered with the old ztunnel after it last wrote the records.
	if regs, err := old.Pods(ctx); err == nil {
		for _, r := range regs {
			m.addMissing(ctx, r.Registration)
		}
	}
	// Keep a way to the old ztunnel for peer lookups of the connections it drains.
	var d net.Dialer
	if c, err := d.DialContext(ctx, "unix", sock); err == nil {
		pred := nodeapi.NewConnClient(c)
		// One request now, so the old server sees an idle keep-alive connection, which its
		// shutdown closes at once, rather than a new one it would wait for.
		if _, err := pred.Pods(ctx); err == nil {
			m.predMu.Lock()
			m.pred = pred
			m.predMu.Unlock()
		} else {
			c.Close()
		}
	}
	regs, err := old.Handover(ctx)
	if err != nil {
		return fmt.Errorf("hand-over: %w", err)
	}
	held := map[string]bool{}
	for _, r := range regs {
		held[r.UID] = true
		m.addMissing(ctx, r)
	}
	for _, p := range m.Pods() {
		if !held[p.UID] {
			// Removed from the old ztunnel while this one restored it.
			_ = m.Remove(ctx, p.UID)
		}
	}
	// A pod whose listeners could not open beside the old ones (an old ztunnel without
	// SO_REUSEPORT) gets them now that the old ones are closed.
	m.Reconcile(ctx)
	m.releaseOrphans(ctx)
	m.log.Info("took over from the previous ztunnel", "pods", len(regs))
	return nil
}

// predecessorPeer asks the predecessor about a connection this ztunnel does not carry.
func (m *Manager) predecessorPeer(ctx context.Context, src, dst netip.AddrPort) (nodeapi.Peer, bool) {
	m.predMu.Lock()
	pred := m.pred
	m.predMu.Unlock()
	if pred == nil {
		return nodeapi.Peer{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	p, err := pred.Peer(ctx, src, dst)
	if err != nil && !errors.Is(err, nodeapi.ErrUnknownPeer) {
		// The predecessor is gone: it has drained.
		m.predMu.Lock()
		if m.pred == pred {
			m.pred = nil
		}
		m.predMu.Unlock()
	}
	return p, err == nil
}

// addMissing adds r unless the same pod (UID and network namespace) is registered already.
func (m *Manager) addMissing(ctx context.Context, r nodeapi.Registration) {
	m.mu.Lock()
	e, ok := m.pods[r.UID]
	same := ok && e.reg.NetNS == r.NetNS
	m.mu.Unlock()
	if same {
		return
	}
	if err := m.Add(ctx, r); err != nil {
		m.log.Warn("take over pod", "uid", r.UID, "err", err)
	}
}
