// Package cniplugin is ambit's CNI plugin, chained after the cluster's own network plugin (the
// bridge, say) in the node's conflist. On ADD for a pod that belongs to the mesh — the label
// ambit.dev/dataplane-mode=ambient (or Istio's istio.io/dataplane-mode) on the pod or its
// namespace — it hands the pod's network namespace to the node's ztunnel over the node API
// (proto/nodeapi); when ztunnel cannot take it, the ADD fails, so the kubelet tries the
// sandbox again rather than start a pod outside the mesh. DEL takes the pod back; CHECK
// verifies ztunnel holds an enrolled pod; VERSION answers per the CNI spec. The result of the
// previous plugin is passed on unchanged.
//
// It learns the labels from the Kubernetes API through a kubeconfig the node agent writes
// (package agent), and has no state of its own.
package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"ambit.dev/node/internal/enrol"
	"ambit.dev/proto/nodeapi"
)

// Type is the plugin's type in a conflist, and its binary's name in the CNI bin dir.
const Type = "ambit-cni"

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Config is the plugin's entry in the conflist (the runtime adds name, cniVersion and
// prevResult).
type Config struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	// Kubeconfig is the file the node agent writes, for reading labels.
	Kubeconfig string `json:"kubeconfig"`
	// NodeAPI is ztunnel's node API socket.
	NodeAPI string `json:"node_api"`
	// ExcludeNamespaces are never enrolled and never looked up: the mesh's own, and
	// kube-system, so that they start even while the API server or ztunnel is away.
	ExcludeNamespaces []string        `json:"exclude_namespaces,omitempty"`
	PrevResult        json.RawMessage `json:"prevResult,omitempty"`
}

// Error is a CNI error result (spec: "Error" result type). Code 11 is "try again later".
type Error struct {
	Code    int    `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details == "" {
		return e.Msg
	}
	return e.Msg + ": " + e.Details
}

// CNI error codes used here.
const (
	codeIncompatibleVersion = 1
	codeInvalidEnv          = 4
	codeDecode              = 6
	codeTryAgainLater       = 11
)

// Call is one invocation: the CNI_* environment, the config on stdin.
type Call struct {
	Command     string // CNI_COMMAND
	ContainerID string // CNI_CONTAINERID
	Netns       string // CNI_NETNS
	Args        string // CNI_ARGS
	Stdin       []byte
}

// CallFromEnv reads a Call from the process environment.
func CallFromEnv(getenv func(string) string, stdin io.Reader) (Call, error) {
	b, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	return Call{Command: getenv("CNI_COMMAND"), ContainerID: getenv("CNI_CONTAINERID"), Netns: getenv("CNI_NETNS"),
		Args: getenv("CNI_ARGS"), Stdin: b}, err
}

// Plugin runs calls. Its zero value is the real one.
type Plugin struct {
	// Timeout bounds a call; default 20 s (the kubelet's runtime gives a sandbox minutes).
	Timeout time.Duration
	// Log receives one line per decision (stderr, which the runtime logs on failure).
	Log io.Writer
}

// Run runs c and writes its result to stdout. The error, if any, is an *Error for the
// runtime (Main writes it as JSON on stdout and exits 1).
func (p Plugin) Run(c Call, stdout io.Writer) error {
	if c.Command == "VERSION" {
		return json.NewEncoder(stdout).Encode(map[string]any{"cniVersion": "1.0.0", "supportedVersions": SupportedVersions})
	}
	var conf Config
	if err := json.Unmarshal(c.Stdin, &conf); err != nil {
		return &Error{Code: codeDecode, Msg: "decode network config", Details: err.Error()}
	}
	if conf.CNIVersion != "" && !slices.Contains(SupportedVersions, conf.CNIVersion) {
		return &Error{Code: codeIncompatibleVersion, Msg: "unsupported cniVersion " + conf.CNIVersion}
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := parseArgs(c.Args)
	ns, name := args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"]
	switch c.Command {
	case "ADD":
		if err := p.add(ctx, conf, c, ns, name); err != nil {
			return err
		}
		return passResult(conf, stdout)
	case "DEL":
		// DEL must succeed when there is nothing to remove, and when ztunnel is away (it
		// releases pods whose network namespace is gone by itself).
		if ns == "" || name == "" || conf.NodeAPI == "" {
			return nil
		}
		err := nodeapi.NewClient(conf.NodeAPI).Remove(ctx, enrol.WorkloadUID(ns, name))
		p.logf("DEL pod=%s/%s err=%v", ns, name, err)
		return nil
	case "CHECK":
		return p.check(ctx, conf, ns, name)
	case "GC", "STATUS":
		return nil
	}
	return &Error{Code: codeInvalidEnv, Msg: "unknown CNI_COMMAND " + c.Command}
}

func (p Plugin) add(ctx context.Context, conf Config, c Call, ns, name string) error {
	if ns == "" || name == "" {
		return nil // not a Kubernetes pod
	}
	if slices.Contains(conf.ExcludeNamespaces, ns) {
		return nil
	}
	ambient, sa, err := p.enrolled(ctx, conf, ns, name)
	if err != nil {
		return &Error{Code: codeTryAgainLater, Msg: "ambit: cannot tell whether pod " + ns + "/" + name + " is in the mesh", Details: err.Error()}
	}
	if !ambient {
		return nil
	}
	if c.Netns == "" {
		return &Error{Code: codeInvalidEnv, Msg: "CNI_NETNS is empty"}
	}
	ips, err := prevIPs(conf.PrevResult)
	if err != nil {
		return &Error{Code: codeDecode, Msg: "decode prevResult", Details: err.Error()}
	}
	// With the pod's addresses ztunnel captures it before this ADD returns, so before any
	// of its containers starts; without (a plugin first in its list), when the controller
	// pushes the pod's Workload.
	reg := nodeapi.Registration{UID: enrol.WorkloadUID(ns, name), Namespace: ns, Name: name, NetNS: c.Netns,
		ServiceAccount: sa, IPs: ips, Ambient: len(ips) > 0}
	if err := nodeapi.NewClient(conf.NodeAPI).Add(ctx, reg); err != nil {
		p.logf("ADD pod=%s/%s netns=%s err=%v", ns, name, c.Netns, err)
		return &Error{Code: codeTryAgainLater, Msg: "ambit: the node's ztunnel did not take pod " + ns + "/" + name, Details: err.Error()}
	}
	p.logf("ADD pod=%s/%s netns=%s registered", ns, name, c.Netns)
	return nil
}

func (p Plugin) check(ctx context.Context, conf Config, ns, name string) error {
	if ns == "" || name == "" || slices.Contains(conf.ExcludeNamespaces, ns) {
		return nil
	}
	ambient, _, err := p.enrolled(ctx, conf, ns, name)
	if err != nil || !ambient {
		return nil // CHECK reports only what is known to be wrong
	}
	pods, err := nodeapi.NewClient(conf.NodeAPI).Pods(ctx)
	if err != nil {
		return &Error{Code: codeTryAgainLater, Msg: "ambit: cannot reach the node's ztunnel", Details: err.Error()}
	}
	uid := enrol.WorkloadUID(ns, name)
	for _, ps := range pods {
		if ps.UID == uid {
			return nil
		}
	}
	return &Error{Code: codeTryAgainLater, Msg: "ambit: pod " + ns + "/" + name + " is enrolled but not registered with the node's ztunnel"}
}

// enrolled looks the pod and its namespace up: whether the pod is in the mesh, and its
// ServiceAccount.
func (p Plugin) enrolled(ctx context.Context, conf Config, ns, name string) (bool, string, error) {
	kc, err := LoadKubeconfig(conf.Kubeconfig)
	if err != nil {
		return false, "", err
	}
	kube, err := newKubeClient(kc)
	if err != nil {
		return false, "", err
	}
	pod, err := kube.pod(ctx, ns, name)
	if err != nil {
		return false, "", err
	}
	if pod.Spec.HostNetwork {
		return false, "", nil
	}
	nsObj, err := kube.namespace(ctx, ns)
	if err != nil {
		return false, "", err
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return enrol.IsAmbient(pod.Metadata.Labels, nsObj.Metadata.Labels), sa, nil
}

// prevIPs are the pod's addresses in the previous plugin's result ("ips": [{"address":
// "10.0.0.5/24"}]), without their prefix lengths.
func prevIPs(prev json.RawMessage) ([]string, error) {
	if len(prev) == 0 || string(prev) == "null" {
		return nil, nil
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(prev, &r); err != nil {
		return nil, err
	}
	var out []string
	for _, ip := range r.IPs {
		pfx, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return nil, fmt.Errorf("ips: %w", err)
		}
		out = append(out, pfx.Addr().String())
	}
	return out, nil
}

// passResult writes the previous plugin's result on, in the config's version; a plugin first
// in its list (no prevResult) answers an empty result.
func passResult(conf Config, stdout io.Writer) error {
	if len(conf.PrevResult) > 0 && string(conf.PrevResult) != "null" {
		var r map[string]any
		if err := json.Unmarshal(conf.PrevResult, &r); err != nil {
			return &Error{Code: codeDecode, Msg: "decode prevResult", Details: err.Error()}
		}
		if conf.CNIVersion != "" {
			r["cniVersion"] = conf.CNIVersion
		}
		return json.NewEncoder(stdout).Encode(r)
	}
	return json.NewEncoder(stdout).Encode(map[string]any{"cniVersion": conf.CNIVersion})
}

// parseArgs splits CNI_ARGS ("K=V;K=V").
func parseArgs(s string) map[string]string {
	out := map[string]string{}
	for kv := range strings.SplitSeq(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

func (p Plugin) logf(format string, args ...any) {
	if p.Log != nil {
		fmt.Fprintf(p.Log, "ambit-cni: "+format+"\n", args...)
	}
}

// Main runs the plugin as a process: the CNI_* environment, the config on stdin, the result
// or error on stdout; it returns the exit code.
func Main(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, err := CallFromEnv(getenv, stdin)
	if err == nil {
		err = Plugin{Log: stderr}.Run(c, stdout)
	}
	if err == nil {
		return 0
	}
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: 999, Msg: err.Error()}
	}
	_ = json.NewEncoder(stdout).Encode(map[string]any{"cniVersion": "1.0.0", "code": e.Code, "msg": e.Msg, "details": e.Details})
	return 1
}
