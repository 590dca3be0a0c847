package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

// Topology is a lab file (examples/lab.yaml): the lab nodes, the pods on them and the folder
// of Kubernetes objects (Namespaces, ServiceAccounts, Services, policies) the controller
// reads beside the Pods the lab writes.
type Topology struct {
	// Name names the lab; it prefixes nothing on the host (one lab runs at a time).
	Name string `json:"name"`
	// Subnet holds every pod address; the bridge takes its first address and is every
	// pod's default gateway. Default 10.77.0.0/16.
	Subnet string `json:"subnet,omitempty"`
	// Config is the folder of Kubernetes YAML copied into the controller's folder at
	// `lab up`, relative to the lab file.
	Config string `json:"config,omitempty"`
	Nodes  []Node `json:"nodes"`
	Pods   []Pod  `json:"pods"`

	dir string // directory of the lab file
}

// Node is one lab node: one ztunnel.
type Node struct {
	Name string `json:"name"`
}

// Pod is one lab pod: a network namespace on a node, with an optional sample application.
type Pod struct {
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount,omitempty"`
	Node           string            `json:"node"`
	Labels         map[string]string `json:"labels,omitempty"`
	// IP is the pod's address; default: the next free one in the node's /24 of Subnet.
	IP   string `json:"ip,omitempty"`
	Apps []App  `json:"apps,omitempty"`
}

// App is a sample application the lab runs in a pod.
type App struct {
	// Kind is http-echo (replies with who it is and the caller it saw, identity included;
	// HTTP/1.1 and h2c), tcp-echo (sends every byte back) or grpc (gRPC's health service).
	Kind string `json:"kind"`
	Port int    `json:"port"`
	// Name names the container port, so Services can target it by name. Default: the kind.
	Name string `json:"name,omitempty"`
}

// AppKinds are the sample applications the lab knows.
var AppKinds = []string{"http-echo", "tcp-echo", "grpc"}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// LoadTopology reads and checks a lab file.
func LoadTopology(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var t Topology
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	t.dir = filepath.Dir(path)
	if err := t.complete(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &t, nil
}

// ConfigDir is the folder of Kubernetes objects the lab copies for the controller; empty
// when the lab file names none.
func (t *Topology) ConfigDir() string {
	if t.Config == "" {
		return ""
	}
	if filepath.IsAbs(t.Config) {
		return t.Config
	}
	return filepath.Join(t.dir, t.Config)
}

// Gateway is the bridge's address: every pod's default gateway.
func (t *Topology) Gateway() netip.Prefix {
	p := netip.MustParsePrefix(t.Subnet)
	return netip.PrefixFrom(p.Addr().Next(), p.Bits())
}

// complete fills defaults and reports the first invalid field by its path.
func (t *Topology) complete() error {
	if t.Name == "" {
		t.Name = "ambit-lab"
	}
	if t.Subnet == "" {
		t.Subnet = "10.77.0.0/16"
	}
	subnet, err := netip.ParsePrefix(t.Subnet)
	if err != nil || !subnet.Addr().Is4() || subnet.Bits() > 16 || subnet.Masked() != subnet {
		return fmt.Errorf("subnet: %q is not an IPv4 network of /16 or wider (e.g. 10.77.0.0/16)", t.Subnet)
	}
	if len(t.Nodes) == 0 {
		return fmt.Errorf("nodes: a lab needs at least one node")
	}
	if len(t.Nodes) > 50 {
		return fmt.Errorf("nodes: %d nodes; the lab runs at most 50", len(t.Nodes))
	}
	nodeIndex := map[string]int{}
	for i, n := range t.Nodes {
		if !dnsLabel.MatchString(n.Name) {
			return fmt.Errorf("nodes[%d].name: %q is not a DNS label", i, n.Name)
		}
		if _, dup := nodeIndex[n.Name]; dup {
			return fmt.Errorf("nodes[%d].name: node %q listed twice", i, n.Name)
		}
		nodeIndex[n.Name] = i
	}
	used := map[netip.Addr]string{t.Gateway().Addr(): "the bridge"}
	names := map[string]bool{}
	next := make([]int, len(t.Nodes))
	for i := range t.Pods {
		p := &t.Pods[i]
		field := func(f string) string { return fmt.Sprintf("pods[%d].%s", i, f) }
		if !dnsLabel.MatchString(p.Name) {
			return fmt.Errorf("%s: %q is not a DNS label", field("name"), p.Name)
		}
		if !dnsLabel.MatchString(p.Namespace) {
			return fmt.Errorf("%s: %q is not a DNS label", field("namespace"), p.Namespace)
		}
		if names[p.Namespace+"/"+p.Name] {
			return fmt.Errorf("%s: pod %s/%s listed twice", field("name"), p.Namespace, p.Name)
		}
		names[p.Namespace+"/"+p.Name] = true
		if p.ServiceAccount == "" {
			p.ServiceAccount = "default"
		}
		if !dnsLabel.MatchString(p.ServiceAccount) {
			return fmt.Errorf("%s: %q is not a DNS label", field("serviceAccount"), p.ServiceAccount)
		}
		ni, ok := nodeIndex[p.Node]
		if !ok {
			return fmt.Errorf("%s: no node %q in nodes", field("node"), p.Node)
		}
		if p.IP == "" {
			// node i takes <subnet>.<i+1>.2 onwards
			base := subnet.Addr().As4()
			for {
				host := next[ni] + 2
				next[ni]++
				if host > 254 {
					return fmt.Errorf("%s: node %q has no free address left; give the pod an ip", field("ip"), p.Node)
				}
				a := netip.AddrFrom4([4]byte{base[0], base[1], base[2] + byte(ni+1), byte(host)})
				if _, taken := used[a]; !taken {
					p.IP = a.String()
					break
				}
			}
		}
		a, err := netip.ParseAddr(p.IP)
		if err != nil || !subnet.Contains(a) {
			return fmt.Errorf("%s: %q is not an address in subnet %s", field("ip"), p.IP, t.Subnet)
		}
		if other, taken := used[a]; taken {
			return fmt.Errorf("%s: %s is already %s", field("ip"), p.IP, other)
		}
		used[a] = "pod " + p.Namespace + "/" + p.Name
		ports := map[int]bool{}
		for j := range p.Apps {
			app := &p.Apps[j]
			af := func(f string) string { return fmt.Sprintf("pods[%d].apps[%d].%s", i, j, f) }
			if !contains(AppKinds, app.Kind) {
				return fmt.Errorf("%s: %q is not one of %s", af("kind"), app.Kind, strings.Join(AppKinds, ", "))
			}
			if app.Port < 1 || app.Port > 65535 || reservedPort(app.Port) {
				return fmt.Errorf("%s: %d is not a free port (1-65535, not 15000-15090 which ztunnel uses)", af("port"), app.Port)
			}
			if ports[app.Port] {
				return fmt.Errorf("%s: port %d used twice in the pod", af("port"), app.Port)
			}
			ports[app.Port] = true
			if app.Name == "" {
				app.Name = app.Kind
			}
		}
	}
	return nil
}

func reservedPort(p int) bool { return p >= 15000 && p <= 15090 }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
