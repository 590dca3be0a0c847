// Package inpod keeps the pods ztunnel serves on its node: the node-side API through which
// the lab, or a Kubernetes CNI plugin, hands a pod over (its UID and network namespace), the
// capture and per-pod proxy for each, and a record on disk so that after a restart ztunnel
// gets back every pod it served. A pod whose workload is not (or no longer) in ambient mode
// stays registered but uncaptured, so enabling its namespace later captures it again.
package inpod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/nodeapi"
	"ambit.dev/ztunnel/internal/proxy"
	"ambit.dev/ztunnel/internal/state"
)

// Capturer installs and removes a pod's redirection and opens its sockets; package
// capture in production.
type Capturer interface {
	Install(ctx context.Context, netns string) error
	Remove(ctx context.Context, netns string) error
	Net(netns string) proxy.Net
}

// Manager owns the registered pods.
type Manager struct {
	node    *proxy.Node
	state   *state.State
	capture Capturer
	file    string
	log     *slog.Logger

	recMu sync.Mutex // one reconciliation at a time
	mu    sync.Mutex
	pods  map[string]*entry
}

type entry struct {
	reg    nodeapi.Registration
	proxy  *proxy.Pod
	uid    string
	reason string
}

// NewManager returns a Manager that records its pods in stateDir (empty: not persisted).
func NewManager(node *proxy.Node, st *state.State, c Capturer, stateDir string, log *slog.Logger) *Manager {
	m := &Manager{node: node, state: st, capture: c, log: log, pods: map[string]*entry{}}
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
	return nil
}

// Add registers a pod and captures it if its workload is in ambient mode. Adding a pod
// twice is harmless.
func (m *Manager) Add(ctx context.Context, r nodeapi.Registration) error {
	if r.UID == "" || r.NetNS == "" {
		return errors.New("pod registration needs uid and netns")
	}
	if _, err := os.Stat(r.NetNS); err != nil {
		return fmt.Errorf("pod %s: network namespace: %w", r.UID, err)
	}
	m.mu.Lock()
	if e, ok := m.pods[r.UID]; ok && e.reg.NetNS == r.NetNS {
		m.mu.Unlock()
		m.Reconcile(ctx)
		return nil
	}
	old := m.pods[r.UID]
	m.pods[r.UID] = &entry{reg: r, uid: r.UID}
	m.mu.Unlock()
	if old != nil {
		m.recMu.Lock()
		m.stop(ctx, old)
		m.recMu.Unlock()
	}
	m.save()
	m.Reconcile(ctx)
	return nil
}

// Remove stops serving a pod and removes its rules; removing an unknown pod is harmless.
func (m *Manager) Remove(ctx context.Context, uid string) error {
	m.recMu.Lock()
	defer m.recMu.Unlock()
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
// ambient mode, released when it is not.
func (m *Manager) Reconcile(ctx context.Context) {
	m.recMu.Lock()
	defer m.recMu.Unlock()
	m.mu.Lock()
	entries := make([]*entry, 0, len(m.pods))
	for _, e := range m.pods {
		entries = append(entries, e)
	}
	m.mu.Unlock()
	for _, e := range entries {
		w, ok := m.state.WorkloadByUID(e.uid)
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
	e.proxy, e.reason = p, ""
	m.mu.Unlock()
	m.log.Info("pod captured", "uid", e.uid, "pod", w.GetNamespace()+"/"+w.GetName(), "netns", e.reg.NetNS)
	return nil
}

func (m *Manager) stop(ctx context.Context, e *entry) {
	m.mu.Lock()
	p := e.proxy
	e.proxy = nil
	m.mu.Unlock()
	if p == nil {
		return
	}
	p.Close()
	if err := m.capture.Remove(ctx, e.reg.NetNS); err != nil {
		// The namespace may be gone with its pod, which removes the rules too.
		m.log.Info("remove capture", "uid", e.uid, "err", err)
	}
	m.log.Info("pod released", "uid", e.uid, "netns", e.reg.NetNS)
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
	tmp := m.file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		err = os.Rename(tmp, m.file)
		if err != nil {
			m.log.Warn("record pods", "err", err)
		}
	}
}
