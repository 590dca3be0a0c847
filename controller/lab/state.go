// Package lab runs the mesh on one machine: network namespaces stand in for pods, veth
// pairs join them to a bridge, one ztunnel runs per lab node and the controller reads a
// folder of YAML the lab writes. `ambitctl lab up|down|status` drives it; so do the demo,
// the end-to-end tests and the benchmarks.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DefaultStateDir is where a running lab keeps its generated config, tokens, logs, pid files
// and state.json. It is on tmpfs, so a reboot (which also drops every namespace and link)
// leaves nothing stale behind.
const DefaultStateDir = "/run/ambit-lab"

// State is what `lab up` records in state.json for `lab status`, `lab down` and the CLI
// commands that need to find a lab's proxies.
type State struct {
	Name string `json:"name"`
	// Prefix names the host objects (see Options.Prefix); Bridge is the bridge and Gateway
	// its address, every pod's default gateway.
	Prefix  string `json:"prefix"`
	Bridge  string `json:"bridge"`
	Gateway string `json:"gateway"`
	// ConfigDir is the controller's folder; RootCert the mesh root it created.
	ConfigDir  string    `json:"configDir"`
	RootCert   string    `json:"rootCert"`
	Controller ProcState `json:"controller"`
	// GRPCAddr is the controller's config push and CA; DebugAddr its metrics and
	// /debug/proxies.
	GRPCAddr  string      `json:"grpcAddr"`
	DebugAddr string      `json:"debugAddr"`
	Nodes     []NodeState `json:"nodes"`
	Pods      []PodState  `json:"pods"`
	// Waypoints are the waypoint proxies `ambitctl waypoint apply` started: each in a pod of
	// its own, as a Deployment would run it in Kubernetes.
	Waypoints []WaypointState `json:"waypoints,omitempty"`
}

// WaypointState is one waypoint proxy of the lab.
type WaypointState struct {
	Name      string    `json:"name"`
	Namespace string    `json:"namespace"`
	For       string    `json:"for"`
	Node      string    `json:"node"`
	NetNS     string    `json:"netns"`
	Link      string    `json:"link"`
	IP        string    `json:"ip"`
	Proc      ProcState `json:"proc"`
	AdminAddr string    `json:"adminAddr"`
	ReadyAddr string    `json:"readyAddr"`
}

// ProcState is one process the lab started.
type ProcState struct {
	PID int    `json:"pid"`
	Log string `json:"log"`
}

// NodeState is one lab node and its ztunnel.
type NodeState struct {
	Name        string    `json:"name"`
	Ztunnel     ProcState `json:"ztunnel"`
	AdminAddr   string    `json:"adminAddr"`
	MetricsAddr string    `json:"metricsAddr"`
	ReadyAddr   string    `json:"readyAddr"`
	NodeAPI     string    `json:"nodeAPI"`
	StateDir    string    `json:"stateDir"`
}

// PodState is one lab pod: a network namespace with its address and application.
type PodState struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Node           string `json:"node"`
	// UID is the pod's workload name in the config, under which its ztunnel knows it.
	UID   string     `json:"uid"`
	NetNS string     `json:"netns"`
	IP    string     `json:"ip"`
	Apps  []AppState `json:"apps,omitempty"`
}

// AppState is a sample application running in a pod.
type AppState struct {
	Kind string    `json:"kind"`
	Port int       `json:"port"`
	Proc ProcState `json:"proc"`
}

// Pod returns the recorded pod namespace/name.
func (s *State) Pod(namespace, name string) (*PodState, error) {
	for i := range s.Pods {
		if s.Pods[i].Namespace == namespace && s.Pods[i].Name == name {
			return &s.Pods[i], nil
		}
	}
	return nil, fmt.Errorf("lab %q has no pod %s/%s", s.Name, namespace, name)
}

// NotUpError is LoadState's error when no lab is up. It says how to start one, naming
// ambitctl as Invoked: the command line sets it to how the user ran ambitctl, since the bare
// name is often not on the PATH; the default is bin/ambitctl, where `make build` puts it.
type NotUpError struct {
	State   string // the state.json that does not exist
	Invoked string
}

func (e *NotUpError) Error() string {
	invoked := e.Invoked
	if invoked == "" {
		invoked = "bin/ambitctl"
	}
	return fmt.Sprintf("no lab is up (no %s); run `%s lab up -f examples/lab.yaml`", e.State, invoked)
}

func (e *NotUpError) Unwrap() error { return os.ErrNotExist }

// LoadState reads the state.json of the lab in dir; with no lab up, the error is a
// *NotUpError.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &NotUpError{State: filepath.Join(dir, "state.json")}
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, "state.json"), err)
	}
	return &s, nil
}

// NodeAdminAddr returns the admin address (/config_dump) of the ztunnel of node in the lab
// whose state is in dir.
func NodeAdminAddr(dir, node string) (string, error) {
	s, err := LoadState(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, n := range s.Nodes {
		if n.Name == node {
			return n.AdminAddr, nil
		}
		names = append(names, n.Name)
	}
	return "", fmt.Errorf("lab %q has no node %q (nodes: %v)", s.Name, node, names)
}
