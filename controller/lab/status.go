package lab

import (
	"context"
	"fmt"
	"os"
	"time"

	"ambit.dev/proto/nodeapi"
)

// Status is what `lab status` reports: every process, whether it runs and is ready, and
// every pod with whether its ztunnel captures it.
type Status struct {
	Name       string           `json:"name"`
	Controller ProcStatus       `json:"controller"`
	Nodes      []NodeStatus     `json:"nodes"`
	Waypoints  []WaypointStatus `json:"waypoints,omitempty"`
	Pods       []PodStatus      `json:"pods"`
}

// WaypointStatus is one waypoint of the lab.
type WaypointStatus struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	For       string     `json:"for"`
	Node      string     `json:"node"`
	IP        string     `json:"ip"`
	Proc      ProcStatus `json:"proc"`
}

// ProcStatus is one process of the lab.
type ProcStatus struct {
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
	Ready   bool   `json:"ready"`
	Detail  string `json:"detail,omitempty"`
	Log     string `json:"log"`
}

// NodeStatus is one lab node's ztunnel.
type NodeStatus struct {
	Name    string     `json:"name"`
	Ztunnel ProcStatus `json:"ztunnel"`
	Admin   string     `json:"admin"`
}

// PodStatus is one lab pod.
type PodStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node"`
	IP        string `json:"ip"`
	NetNS     bool   `json:"netns"`
	Captured  bool   `json:"captured"`
	Reason    string `json:"reason,omitempty"`
	Apps      string `json:"apps,omitempty"`
	AppsUp    bool   `json:"appsUp"`
}

// Healthy says whether every process runs and is ready and every namespace exists.
func (s *Status) Healthy() bool {
	ok := s.Controller.Ready
	for _, n := range s.Nodes {
		ok = ok && n.Ztunnel.Ready
	}
	for _, w := range s.Waypoints {
		ok = ok && w.Proc.Ready
	}
	for _, p := range s.Pods {
		ok = ok && p.NetNS && p.AppsUp
	}
	return ok
}

// GetStatus checks the lab recorded in dir.
func GetStatus(ctx context.Context, dir string) (*Status, error) {
	if dir == "" {
		dir = DefaultStateDir
	}
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	s := &Status{Name: st.Name, Controller: procStatus(st.Controller, "http://"+st.DebugAddr+"/readyz")}
	captured := map[string]nodeapi.PodStatus{}
	for _, n := range st.Nodes {
		s.Nodes = append(s.Nodes, NodeStatus{Name: n.Name, Admin: n.AdminAddr,
			Ztunnel: procStatus(n.Ztunnel, "http://"+n.ReadyAddr+"/healthz/ready")})
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		pods, err := nodeapi.NewClient(n.NodeAPI).Pods(cctx)
		cancel()
		if err == nil {
			for _, p := range pods {
				captured[p.UID] = p
			}
		}
	}
	for _, w := range st.Waypoints {
		s.Waypoints = append(s.Waypoints, WaypointStatus{Namespace: w.Namespace, Name: w.Name, For: w.For, Node: w.Node,
			IP: w.IP, Proc: procStatus(w.Proc, "http://"+w.ReadyAddr+"/healthz/ready")})
	}
	for _, p := range st.Pods {
		ps := PodStatus{Namespace: p.Namespace, Name: p.Name, Node: p.Node, IP: p.IP, AppsUp: true}
		if _, err := os.Stat(p.NetNS); err == nil {
			ps.NetNS = true
		}
		if c, ok := captured[p.UID]; ok {
			ps.Captured, ps.Reason = c.Captured, c.Reason
		} else {
			ps.Reason = "not registered with its ztunnel"
		}
		ps.Apps = appList(p.Apps)
		for _, a := range p.Apps {
			ps.AppsUp = ps.AppsUp && alive(a.Proc.PID)
		}
		s.Pods = append(s.Pods, ps)
	}
	return s, nil
}

func procStatus(p ProcState, readyURL string) ProcStatus {
	s := ProcStatus{PID: p.PID, Log: p.Log, Running: alive(p.PID)}
	if !s.Running {
		s.Detail = "not running; see " + p.Log
		return s
	}
	if err := httpOK(readyURL); err != nil {
		s.Detail = fmt.Sprint(err)
		return s
	}
	s.Ready = true
	return s
}

// WaitCaptured waits until every pod of namespace in the lab in dir is captured by its
// ztunnel (captured true) or released (false).
func WaitCaptured(ctx context.Context, dir, namespace string, captured bool, timeout time.Duration) error {
	want := "captured"
	if !captured {
		want = "released"
	}
	return waitFor(ctx, timeout, "pods of namespace "+namespace+" "+want, func() error {
		s, err := GetStatus(ctx, dir)
		if err != nil {
			return err
		}
		n := 0
		for _, p := range s.Pods {
			if p.Namespace != namespace {
				continue
			}
			n++
			if p.Captured != captured {
				return fmt.Errorf("pod %s/%s is not %s yet (%s)", p.Namespace, p.Name, want, p.Reason)
			}
		}
		if n == 0 {
			return fmt.Errorf("lab %s has no pod in namespace %s", s.Name, namespace)
		}
		return nil
	})
}
