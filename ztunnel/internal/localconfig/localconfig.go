// Package localconfig is ztunnel's standalone configuration: the mesh read from a YAML (or
// JSON) file instead of pushed by the controller, in the shapes of proto/config/v1 with
// protojson field names, like Rust ztunnel's local config. Addresses are written as text
// ("10.0.0.1", "10.0.0.0/8") rather than the base64 bytes protojson would want.
//
//	version: v1
//	peerAuthentication: PERMISSIVE   # mesh-wide default; STRICT refuses plaintext
//	workloads: [...]                 # configv1.Workload
//	services: [...]                  # configv1.Service
//	policies: [...]                  # configv1.Authorization
//	waypoints: [...]                 # configv1.Waypoint
//
// A Source applies the file to a state.State and re-reads it when it changes; a file
// that does not parse or validate is reported with the field at fault, and the last good
// config stays.
package localconfig

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"ambit.dev/mesh/state"
	configv1 "ambit.dev/proto/config/v1"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Version is the only value the file's version field takes.
const Version = "v1"

// Config is a parsed local config file.
type Config struct {
	// Resources by type URL and resource name, as the controller would push them:
	// workloads by uid, services by "<namespace>/<hostname>", policies and waypoints by
	// "<namespace>/<name>".
	Resources map[string]map[string]proto.Message
	// Strict is the mesh-wide PeerAuthentication mode (peerAuthentication: STRICT).
	Strict bool
}

// file is the document's top level; each list element is decoded by protojson.
type file struct {
	Version            string            `json:"version"`
	PeerAuthentication string            `json:"peerAuthentication"`
	Workloads          []json.RawMessage `json:"workloads"`
	Services           []json.RawMessage `json:"services"`
	Policies           []json.RawMessage `json:"policies"`
	Waypoints          []json.RawMessage `json:"waypoints"`
}

// Parse reads a local config file's contents. Errors name the field at fault, as
// "workloads[1].addresses[0]: ...".
func Parse(data []byte) (*Config, error) {
	js, err := yamlToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	var f file
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if f.Version != Version {
		return nil, fmt.Errorf("version: %q, want %q", f.Version, Version)
	}
	cfg := &Config{Resources: map[string]map[string]proto.Message{
		configv1.WorkloadTypeURL: {}, configv1.ServiceTypeURL: {}, configv1.AuthorizationTypeURL: {}, configv1.WaypointTypeURL: {},
	}}
	switch f.PeerAuthentication {
	case "", "PERMISSIVE", "UNSET":
	case "STRICT":
		cfg.Strict = true
	default:
		return nil, fmt.Errorf("peerAuthentication: %q, want PERMISSIVE or STRICT", f.PeerAuthentication)
	}

	var selectors []*configv1.Authorization
	for i, raw := range f.Policies {
		path := fmt.Sprintf("policies[%d]", i)
		a := &configv1.Authorization{}
		if err := decodeNamed(raw, path, a, policyAddrs); err != nil {
			return nil, err
		}
		if err := put(cfg, configv1.AuthorizationTypeURL, a.GetNamespace()+"/"+a.GetName(), path, a); err != nil {
			return nil, err
		}
		if a.GetScope() == configv1.Authorization_WORKLOAD_SELECTOR && len(a.GetSelector()) > 0 {
			selectors = append(selectors, a)
		}
	}
	for i, raw := range f.Waypoints {
		path := fmt.Sprintf("waypoints[%d]", i)
		w := &configv1.Waypoint{}
		if err := decodeNamed(raw, path, w, waypointAddrs); err != nil {
			return nil, err
		}
		if err := put(cfg, configv1.WaypointTypeURL, w.GetNamespace()+"/"+w.GetName(), path, w); err != nil {
			return nil, err
		}
	}
	for i, raw := range f.Services {
		path := fmt.Sprintf("services[%d]", i)
		s := &configv1.Service{}
		if err := decodeNamed(raw, path, s, serviceAddrs); err != nil {
			return nil, err
		}
		if s.Hostname == "" {
			s.Hostname = s.GetName() + "." + s.GetNamespace() + ".svc.cluster.local"
		}
		if err := put(cfg, configv1.ServiceTypeURL, s.GetNamespace()+"/"+s.GetHostname(), path, s); err != nil {
			return nil, err
		}
	}
	for i, raw := range f.Workloads {
		path := fmt.Sprintf("workloads[%d]", i)
		w := &configv1.Workload{}
		if err := decodeNamed(raw, path, w, workloadAddrs); err != nil {
			return nil, err
		}
		if len(w.GetAddresses()) == 0 {
			return nil, fmt.Errorf("%s.addresses: a workload needs at least one address", path)
		}
		if w.Uid == "" {
			w.Uid = w.GetNamespace() + "/" + w.GetName()
		}
		if w.ServiceAccount == "" {
			w.ServiceAccount = "default"
		}
		// A workload listed here is in the mesh unless it says otherwise.
		if !hasField(raw, "tunnelProtocol", "tunnel_protocol") {
			w.TunnelProtocol = configv1.TunnelProtocol_HBONE
		}
		for _, a := range selectors {
			if a.GetNamespace() == w.GetNamespace() && selects(a.GetSelector(), w.GetLabels()) {
				name := a.GetNamespace() + "/" + a.GetName()
				if !slices.Contains(w.AuthorizationPolicies, name) {
					w.AuthorizationPolicies = append(w.AuthorizationPolicies, name)
				}
			}
		}
		for j, name := range w.GetAuthorizationPolicies() {
			if _, ok := cfg.Resources[configv1.AuthorizationTypeURL][name]; !ok {
				return nil, fmt.Errorf("%s.authorizationPolicies[%d]: no policy %q in policies", path, j, name)
			}
		}
		for key := range w.GetServices() {
			if _, ok := cfg.Resources[configv1.ServiceTypeURL][key]; !ok {
				return nil, fmt.Errorf("%s.services: no service %q in services (keys are \"<namespace>/<hostname>\")", path, key)
			}
		}
		if err := put(cfg, configv1.WorkloadTypeURL, w.GetUid(), path, w); err != nil {
			return nil, err
		}
	}
	// What the proxy's state checks: the same validation the controller's pushes get.
	scratch := state.New()
	for _, t := range configv1.TypeURLs {
		if err := scratch.Apply(t, cfg.Resources[t], nil); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// yamlToJSON reads YAML 1.2 (so `no` and `n` stay strings; duplicate keys are an error)
// into JSON; JSON is YAML too.
func yamlToJSON(data []byte) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	if v == nil {
		v = map[string]any{}
	}
	return json.Marshal(v)
}

func put(cfg *Config, typeURL, name, path string, m proto.Message) error {
	if _, dup := cfg.Resources[typeURL][name]; dup {
		return fmt.Errorf("%s: a second resource named %q", path, name)
	}
	cfg.Resources[typeURL][name] = m
	return nil
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// decode converts the text addresses of one list element (fix) and unmarshals it with
// protojson, unknown fields rejected.
// named is a resource with a name and a namespace.
type named interface {
	proto.Message
	GetName() string
	GetNamespace() string
}

// decodeNamed decodes raw into m and requires its name and namespace.
func decodeNamed(raw json.RawMessage, path string, m named, fix func(obj map[string]any, path string) error) error {
	if err := decode(raw, path, m, fix); err != nil {
		return err
	}
	if m.GetName() == "" || m.GetNamespace() == "" {
		return fmt.Errorf("%s: name and namespace are required", path)
	}
	return nil
}

func decode(raw json.RawMessage, path string, m proto.Message, fix func(obj map[string]any, path string) error) error {
	var obj map[string]any
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&obj); err != nil || obj == nil {
		return fmt.Errorf("%s: not an object", path)
	}
	if err := fix(obj, path); err != nil {
		return err
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := protojson.Unmarshal(b, m); err != nil {
		return fmt.Errorf("%s: %s", path, cleanProtoErr(err))
	}
	return nil
}

// cleanProtoErr drops protojson's position in the re-encoded element, which means nothing
// to the file's author; the field it names stays.
func cleanProtoErr(err error) string {
	// protojson separates its parts with a space or a no-break space, at random.
	trim := func(s string) string { return strings.TrimLeft(s, " \u00a0") }
	s := trim(strings.TrimPrefix(err.Error(), "proto:"))
	if strings.HasPrefix(s, "(line ") {
		if i := strings.Index(s, "):"); i >= 0 {
			s = trim(s[i+2:])
		}
	}
	return s
}

func hasField(raw json.RawMessage, names ...string) bool {
	var obj map[string]json.RawMessage
	_ = json.Unmarshal(raw, &obj)
	for _, n := range names {
		if _, ok := obj[n]; ok {
			return true
		}
	}
	return false
}

// field returns obj's value under either of protojson's spellings of a field.
func field(obj map[string]any, names ...string) (string, any, bool) {
	for _, n := range names {
		if v, ok := obj[n]; ok {
			return n, v, true
		}
	}
	return "", nil, false
}

// ipBytes turns a text IP into protojson's base64 bytes.
func ipBytes(v any, path string) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: want an IP address as text, like \"10.0.0.1\"", path)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("%s: %q is not an IP address", path, s)
	}
	return base64.StdEncoding.EncodeToString(ip.Unmap().AsSlice()), nil
}

// networkAddress fixes a NetworkAddress: "10.0.0.1" or {network, address: "10.0.0.1"}.
func networkAddress(v any, path string) (any, error) {
	if s, ok := v.(string); ok {
		b, err := ipBytes(s, path)
		if err != nil {
			return nil, err
		}
		return map[string]any{"address": b}, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: want an IP address or {network, address}", path)
	}
	return obj, fixAddress(obj, path)
}

// gatewayAddress fixes a GatewayAddress's address.
func gatewayAddress(obj map[string]any, path string) error {
	name, v, ok := field(obj, "waypoint")
	if !ok {
		return nil
	}
	gw, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("%s.%s: want an object", path, name)
	}
	if a, ok := gw["address"]; ok {
		na, err := networkAddress(a, path+"."+name+".address")
		if err != nil {
			return err
		}
		gw["address"] = na
	}
	return nil
}

func list(v any, path string) ([]any, error) {
	l, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a list", path)
	}
	return l, nil
}

func workloadAddrs(obj map[string]any, path string) error {
	asAny := func(v any, path string) (any, error) { return ipBytes(v, path) }
	if err := convertList(obj, "addresses", path, asAny); err != nil {
		return err
	}
	return gatewayAddress(obj, path)
}

func serviceAddrs(obj map[string]any, path string) error {
	if err := convertList(obj, "addresses", path, networkAddress); err != nil {
		return err
	}
	return gatewayAddress(obj, path)
}

// convertList rewrites each element of the list under key with conv, in place.
func convertList(obj map[string]any, key, path string, conv func(any, string) (any, error)) error {
	name, v, ok := field(obj, key)
	if !ok {
		return nil
	}
	l, err := list(v, path+"."+name)
	if err != nil {
		return err
	}
	for i, a := range l {
		if l[i], err = conv(a, fmt.Sprintf("%s.%s[%d]", path, name, i)); err != nil {
			return err
		}
	}
	return nil
}

func waypointAddrs(obj map[string]any, path string) error {
	if name, v, ok := field(obj, "address"); ok {
		na, err := networkAddress(v, path+"."+name)
		if err != nil {
			return err
		}
		obj[name] = na
	}
	return nil
}

// policyAddrs fixes rules[].from[].ipBlocks and notIpBlocks: "10.0.0.0/8", "10.0.0.1" or
// {address: "10.0.0.0", length: 8}.
func policyAddrs(obj map[string]any, path string) error {
	rn, rv, ok := field(obj, "rules")
	if !ok {
		return nil
	}
	rules, err := list(rv, path+"."+rn)
	if err != nil {
		return err
	}
	for i, r := range rules {
		rpath := fmt.Sprintf("%s.%s[%d]", path, rn, i)
		rule, ok := r.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object", rpath)
		}
		fv, ok := rule["from"]
		if !ok {
			continue
		}
		froms, err := list(fv, rpath+".from")
		if err != nil {
			return err
		}
		for j, f := range froms {
			fpath := fmt.Sprintf("%s.from[%d]", rpath, j)
			src, ok := f.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: want an object", fpath)
			}
			for _, names := range [][]string{{"ipBlocks", "ip_blocks"}, {"notIpBlocks", "not_ip_blocks"}} {
				bn, bv, ok := field(src, names...)
				if !ok {
					continue
				}
				blocks, err := list(bv, fpath+"."+bn)
				if err != nil {
					return err
				}
				for k, b := range blocks {
					if blocks[k], err = ipBlock(b, fmt.Sprintf("%s.%s[%d]", fpath, bn, k)); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

func ipBlock(v any, path string) (any, error) {
	if s, ok := v.(string); ok {
		if !strings.Contains(s, "/") {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not an IP address or CIDR block", path, s)
			}
			s = netip.PrefixFrom(ip, ip.BitLen()).String()
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a CIDR block", path, s)
		}
		return map[string]any{"address": base64.StdEncoding.EncodeToString(p.Addr().Unmap().AsSlice()), "length": p.Bits()}, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a CIDR block like \"10.0.0.0/8\"", path)
	}
	return obj, fixAddress(obj, path)
}

// fixAddress turns obj's "address", if any, from an IP address into the bytes protojson wants.
func fixAddress(obj map[string]any, path string) error {
	if a, ok := obj["address"]; ok {
		b, err := ipBytes(a, path+".address")
		if err != nil {
			return err
		}
		obj["address"] = b
	}
	return nil
}

// names lists the resource names of one type, sorted.
func names(m map[string]proto.Message) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// errNoFile is returned for an empty path.
var errNoFile = errors.New("local config: no file")
