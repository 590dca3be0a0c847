package cli

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"ambit.dev/mesh/identity"
	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"ambit.dev/proto/nodeapi"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/lab"
)

// DefaultZtunnelAdmin is ztunnel's admin address (loopback only).
const DefaultZtunnelAdmin = "127.0.0.1:15000"

// ztunnel's GET /config_dump is a dump.Ztunnel, the contract ztunnel writes: the resource
// sections stay raw protojson, so that -o json and -o yaml print exactly what ztunnel said.

// certOutput is one certificate as `ztunnel-config certificates -o json|yaml` prints it: a
// dump.CertInfo with camelCase keys like every other JSON ambitctl prints (the dump's
// not_before… are the proxies' wire format, not the CLI's).
type certOutput struct {
	ID        string         `json:"id"`
	Serial    string         `json:"serial,omitempty"`
	NotBefore time.Time      `json:"notBefore,omitzero"`
	NotAfter  time.Time      `json:"notAfter,omitzero"`
	NextFetch time.Time      `json:"nextFetch,omitzero"`
	State     dump.CertState `json:"state"`
	LastError string         `json:"lastError,omitempty"`
	Issuer    string         `json:"issuer,omitempty"`
}

func newCertOutput(c dump.CertInfo) certOutput {
	return certOutput{ID: c.ID.String(), Serial: c.Serial, NotBefore: c.NotBefore, NotAfter: c.NotAfter,
		NextFetch: c.NextFetch, State: c.State, LastError: c.LastError, Issuer: c.Issuer}
}

// rootOutput is one root of the trust bundle as `ztunnel-config roots -o json|yaml` prints it.
type rootOutput struct {
	Subject     string    `json:"subject"`
	Fingerprint string    `json:"fingerprint"`
	NotAfter    time.Time `json:"notAfter"`
}

// section is one kind of thing ztunnel-config lists: raw gives its entries as JSON for -o
// json and yaml, print writes its table.
type section struct {
	name, short string
	raw         func(*dump.Ztunnel) ([]json.RawMessage, error)
	print       func(w io.Writer, d *dump.Ztunnel, f filter) error
}

// filter narrows a listing to a namespace.
type filter struct{ namespace string }

func (f filter) keep(ns string) bool { return f.namespace == "" || f.namespace == ns }

var sections = []section{
	{"workloads", "Workloads (pods) the ztunnel knows: addresses, node, identity, tunnel protocol, waypoint",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) { return d.Workloads, nil }, printWorkloads},
	{"services", "Services the ztunnel knows: VIPs, ports and how many workloads back them",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) { return d.Services, nil }, printServices},
	{"policies", "Authorization policies the ztunnel enforces",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) { return d.Policies, nil }, printPolicies},
	{"certificates", "Workload certificates the ztunnel holds, with their state and expiry",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) {
			certs := make([]certOutput, 0, len(d.Certificates))
			for _, c := range d.Certificates {
				certs = append(certs, newCertOutput(c))
			}
			return marshalEach(certs)
		}, printCertificates},
	{"roots", "Root certificates the ztunnel trusts (its trust bundle; two while the mesh root rotates)",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) {
			roots := make([]rootOutput, 0, len(d.TrustBundle))
			for _, r := range d.TrustBundle {
				roots = append(roots, rootOutput(r))
			}
			return marshalEach(roots)
		}, printRoots},
	{"waypoints", "Waypoints the ztunnel knows",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) { return d.Waypoints, nil }, printWaypoints},
	{"pods", "Pods on the ztunnel's node and whether their traffic is captured",
		func(d *dump.Ztunnel) ([]json.RawMessage, error) { return marshalEach(d.Pods) }, printPods},
}

// marshalEach encodes each entry of a typed section, so that it prints as the raw ones do.
func marshalEach[T any](v []T) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(v))
	for i := range v {
		b, err := json.Marshal(v[i])
		if err != nil {
			return nil, fmt.Errorf("config_dump: entry %d: %w", i, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func ztunnelConfigCommand(o Options) *cobra.Command {
	var (
		admin, node, labDir, namespace string
		output                         *string
	)
	cmd := &cobra.Command{
		Use:     "ztunnel-config",
		Aliases: []string{"zc"},
		Short:   "Show what a ztunnel holds: workloads, services, policies, certificates",
		Long: `Show the configuration one ztunnel holds, read from its admin endpoint
(GET http://<admin-addr>/config_dump, loopback port 15000 on the ztunnel's node).

-o json and -o yaml print the entries as ztunnel sent them (protojson of the config API),
except that IP addresses are written as IPs instead of base64 bytes, and that certificates
have camelCase keys (notAfter, nextFetch, lastError) like all JSON ambitctl prints.

Which ztunnel, in this order: --admin-addr; in a cluster (--kubeconfig or --context), the
ztunnel pod of --node (which may be left out when the cluster has one node), reached through
the API server's port-forward; in the local lab (when a lab is up), the ztunnel of lab node
--node, its admin address looked up in the lab's state (--lab-dir); a cluster again when
$KUBECONFIG or ~/.kube/config exists; else the ztunnel on this host (127.0.0.1:15000).`,
		Example: `  # the ztunnel of node worker-1 of the cluster, through the API server
  ambitctl ztunnel-config workloads --node worker-1 --context prod

  # the ztunnel of lab node node-a, as YAML
  ambitctl ztunnel-config services --node node-a -o yaml

  # a ztunnel at an address of its admin port
  ambitctl ztunnel-config certificates --admin-addr 127.0.0.1:15000`,
	}
	var kf kubeFlags
	kf.registerTarget(cmd.PersistentFlags())
	pf := cmd.PersistentFlags()
	pf.StringVar(&admin, "admin-addr", DefaultZtunnelAdmin, "host:port of the ztunnel's admin endpoint")
	pf.StringVar(&node, "node", "", "node whose ztunnel to ask: a cluster's node, or a lab node (its admin address is in the lab state)")
	pf.StringVar(&labDir, "lab-dir", lab.DefaultStateDir, "state dir of the local lab, for --node")
	for _, s := range sections {
		sub := &cobra.Command{
			Use:   s.name,
			Short: s.short,
			Example: fmt.Sprintf(`  ambitctl ztunnel-config %[1]s
  ambitctl ztunnel-config %[1]s --node node-a -o yaml
  ambitctl ztunnel-config %[1]s --admin-addr 127.0.0.1:15100 -o json`, s.name),
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := checkOutput(*output); err != nil {
					return err
				}
				d, err := ztunnelDump(cmd, o, &kf, admin, node, labDir)
				if err != nil {
					return err
				}
				if *output != outShort {
					raw, err := s.raw(d)
					if err != nil {
						return err
					}
					return printSection(cmd.OutOrStdout(), *output, raw, filter{namespace})
				}
				return s.print(cmd.OutOrStdout(), d, filter{namespace})
			},
		}
		switch s.name {
		case "workloads", "services", "policies", "waypoints", "pods":
			sub.Flags().StringVarP(&namespace, "namespace", "n", "", "show only this namespace")
		}
		cmd.AddCommand(sub)
	}
	requireSubcommand(cmd)
	output = new(string)
	pf.StringVarP(output, "output", "o", outShort, "output format: short (a table), json or yaml")
	return cmd
}

// ztunnelDump fetches the /config_dump of the ztunnel the flags name (see the command's help
// for the order).
func ztunnelDump(cmd *cobra.Command, o Options, kf *kubeFlags, admin, node, labDir string) (*dump.Ztunnel, error) {
	explicit := cmd.Flags().Changed("admin-addr")
	if explicit && (node != "" || kf.given()) {
		return nil, fmt.Errorf("--admin-addr is mutually exclusive with --node, --kubeconfig and --context: it names the ztunnel")
	}
	_, err := os.Stat(filepath.Join(labDir, "state.json"))
	labUp := err == nil
	if !explicit && (kf.given() || (!(node != "" && labUp) && o.KubeconfigFound())) {
		c, err := kf.connect()
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), forwardTimeout)
		defer cancel()
		fw, err := forwardZtunnel(ctx, c, node)
		if err != nil {
			return nil, err
		}
		defer fw.close()
		return fetchConfigDump(ctx, o, fw.addr, "through the port-forward to pod "+fw.pod)
	}
	addr, hint := admin, "is ztunnel running? for the lab use --node"
	if node != "" {
		a, err := lab.NodeAdminAddr(labDir, node)
		if err != nil {
			return nil, err
		}
		addr, hint = a, fmt.Sprintf("is the ztunnel of lab node %q running? see `%s lab status`", node, o.Invoked)
	}
	return fetchConfigDump(cmd.Context(), o, addr, hint)
}

func fetchConfigDump(ctx context.Context, o Options, addr, hint string) (*dump.Ztunnel, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	body, err := get(ctx, o.HTTP, addr, "/config_dump", "ztunnel admin", hint)
	if err != nil {
		return nil, err
	}
	var d dump.Ztunnel
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("ztunnel admin at %s: decode /config_dump: %w", addr, err)
	}
	return &d, nil
}

// printSection prints one section's entries as ztunnel sent them, filtered by namespace,
// except that IP addresses, which protojson writes as base64 bytes, are written as IPs.
func printSection(w io.Writer, format string, raw []json.RawMessage, f filter) error {
	out := make([]any, 0, len(raw))
	for i, r := range raw {
		var v any
		if err := json.Unmarshal(r, &v); err != nil {
			return fmt.Errorf("config_dump: entry %d: %w", i, err)
		}
		if m, ok := v.(map[string]any); ok && f.namespace != "" {
			if ns, _ := m["namespace"].(string); !f.keep(ns) {
				continue
			}
		}
		out = append(out, readableAddresses(v))
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	return printJSON(w, format, b)
}

// readableAddresses replaces, anywhere in v, the base64 value of an "address" field and the
// elements of an "addresses" list by the IP they encode, when they decode to 4 or 16 bytes.
func readableAddresses(v any) any {
	ip := func(x any) any {
		s, ok := x.(string)
		if !ok {
			return x
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || (len(b) != 4 && len(b) != 16) {
			return x
		}
		return addrString(b)
	}
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			switch k {
			case "labels", "selector":
				continue // user data: a label named address stays as it is
			case "address":
				t[k] = ip(x)
			case "addresses":
				if l, ok := x.([]any); ok {
					for i := range l {
						l[i] = ip(l[i])
					}
				}
			}
			t[k] = readableAddresses(t[k])
		}
	case []any:
		for i := range t {
			t[i] = readableAddresses(t[i])
		}
	}
	return v
}

// decode parses protojson entries into messages of type T, tolerating fields this ambitctl
// does not know (a newer ztunnel).
func decode[T any, P interface {
	*T
	proto.Message
}](raw []json.RawMessage, what string) ([]P, error) {
	out := make([]P, 0, len(raw))
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for i, r := range raw {
		m := P(new(T))
		if err := opts.Unmarshal(r, m); err != nil {
			return nil, fmt.Errorf("config_dump: %s %d: %w", what, i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

func addrString(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return fmt.Sprintf("<%d bytes>", len(b))
	}
	return a.Unmap().String()
}

func netAddr(a *configv1.NetworkAddress) string {
	if a == nil || len(a.GetAddress()) == 0 {
		return ""
	}
	s := addrString(a.GetAddress())
	if a.GetNetwork() != "" {
		s = a.GetNetwork() + "/" + s
	}
	return s
}

func printWorkloads(w io.Writer, d *dump.Ztunnel, f filter) error {
	ws, err := decode[configv1.Workload](d.Workloads, "workload")
	if err != nil {
		return err
	}
	wps, err := decode[configv1.Waypoint](d.Waypoints, "waypoint")
	if err != nil {
		return err
	}
	slices.SortFunc(ws, func(a, b *configv1.Workload) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetUid(), b.GetUid()))
	})
	// Peers some pod of this node reaches over HTTP/2 although they are marked HBONE_H3.
	fellBack := map[string]bool{}
	for _, fb := range d.TunnelFallbacks {
		if ap, err := netip.ParseAddrPort(fb.Peer); err == nil {
			fellBack[ap.Addr().Unmap().String()] = true
		}
	}
	t := newTable(w, "NAMESPACE", "NAME", "IP", "NODE", "IDENTITY", "PROTOCOL", "WAYPOINT")
	for _, wl := range ws {
		if !f.keep(wl.GetNamespace()) {
			continue
		}
		ips := make([]string, 0, len(wl.GetAddresses()))
		fb := false
		for _, a := range wl.GetAddresses() {
			ips = append(ips, addrString(a))
			fb = fb || fellBack[addrString(a)]
		}
		proto := tunnelProtocol(wl.GetTunnelProtocol())
		if fb && wl.GetTunnelProtocol() == configv1.TunnelProtocol_HBONE_H3 {
			proto += "(FALLBACK-HBONE)" // UDP 15008 did not answer: HTTP/2 for now
		}
		t.row(wl.GetNamespace(), wl.GetName(), strings.Join(ips, ","), wl.GetNode(), workloadIdentity(wl),
			proto, waypointName(wl.GetWaypoint(), wps))
	}
	return t.flush()
}

func workloadIdentity(wl *configv1.Workload) string {
	id, err := identity.WorkloadIdentity(wl, spiffeid.RequireTrustDomainFromString(model.DefaultTrustDomain))
	if err != nil {
		return ""
	}
	return id.String()
}

// tunnelProtocol names how traffic reaches a workload: TCP (not in the mesh), HBONE, or
// HBONE over HTTP/3.
func tunnelProtocol(p configv1.TunnelProtocol) string {
	switch p {
	case configv1.TunnelProtocol_NONE:
		return "TCP"
	case configv1.TunnelProtocol_HBONE_H3:
		return "HBONE-H3"
	}
	return p.String()
}

// waypointName names a workload's or service's waypoint by its Gateway when the ztunnel
// knows it, else by its address; "None" when there is none.
func waypointName(g *configv1.GatewayAddress, wps []*configv1.Waypoint) string {
	if g == nil || g.GetAddress() == nil {
		return "None"
	}
	for _, wp := range wps {
		if proto.Equal(wp.GetAddress(), g.GetAddress()) {
			return wp.GetNamespace() + "/" + wp.GetName()
		}
	}
	return netAddr(g.GetAddress())
}

func printServices(w io.Writer, d *dump.Ztunnel, f filter) error {
	ss, err := decode[configv1.Service](d.Services, "service")
	if err != nil {
		return err
	}
	ws, err := decode[configv1.Workload](d.Workloads, "workload")
	if err != nil {
		return err
	}
	// Workload.services is keyed by "<namespace>/<hostname>".
	endpoints := map[string]int{}
	for _, wl := range ws {
		for k := range wl.GetServices() {
			endpoints[k]++
		}
	}
	slices.SortFunc(ss, func(a, b *configv1.Service) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetHostname(), b.GetHostname()))
	})
	t := newTable(w, "NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS")
	for _, s := range ss {
		if !f.keep(s.GetNamespace()) {
			continue
		}
		vips := make([]string, 0, len(s.GetAddresses()))
		for _, a := range s.GetAddresses() {
			vips = append(vips, netAddr(a))
		}
		ports := make([]string, 0, len(s.GetPorts()))
		for _, p := range s.GetPorts() {
			ports = append(ports, portString(p))
		}
		t.row(s.GetNamespace(), cmp.Or(s.GetName(), s.GetHostname()), strings.Join(vips, ","), strings.Join(ports, ","),
			strconv.Itoa(endpoints[s.GetNamespace()+"/"+s.GetHostname()]))
	}
	return t.flush()
}

// portString writes a port as kubectl writes a NodePort: service:target/protocol, the target
// left out when it is the same or not set (a named target port resolved per workload).
func portString(p *configv1.Port) string {
	s := strconv.FormatUint(uint64(p.GetServicePort()), 10)
	if tp := p.GetTargetPort(); tp != 0 && tp != p.GetServicePort() {
		s += ":" + strconv.FormatUint(uint64(tp), 10)
	}
	return s + "/" + p.GetAppProtocol().String()
}

func printPolicies(w io.Writer, d *dump.Ztunnel, f filter) error {
	ps, err := decode[configv1.Authorization](d.Policies, "policy")
	if err != nil {
		return err
	}
	slices.SortFunc(ps, func(a, b *configv1.Authorization) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	t := newTable(w, "NAMESPACE", "NAME", "ACTION", "SCOPE", "RULES")
	for _, p := range ps {
		if !f.keep(p.GetNamespace()) {
			continue
		}
		t.row(p.GetNamespace(), p.GetName(), p.GetAction().String(), p.GetScope().String(), strconv.Itoa(len(p.GetRules())))
	}
	return t.flush()
}

func printWaypoints(w io.Writer, d *dump.Ztunnel, f filter) error {
	wps, err := decode[configv1.Waypoint](d.Waypoints, "waypoint")
	if err != nil {
		return err
	}
	slices.SortFunc(wps, func(a, b *configv1.Waypoint) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	t := newTable(w, "NAMESPACE", "NAME", "FOR", "ADDRESS", "IDENTITY")
	for _, wp := range wps {
		if !f.keep(wp.GetNamespace()) {
			continue
		}
		addr := netAddr(wp.GetAddress())
		if addr != "" && wp.GetHbonePort() != 0 {
			addr += ":" + strconv.FormatUint(uint64(wp.GetHbonePort()), 10)
		}
		t.row(wp.GetNamespace(), wp.GetName(), strings.ToLower(wp.GetFor().String()), addr, wp.GetIdentity())
	}
	return t.flush()
}

func printCertificates(w io.Writer, d *dump.Ztunnel, _ filter) error {
	certs := slices.Clone(d.Certificates)
	slices.SortFunc(certs, func(a, b dump.CertInfo) int { return cmp.Compare(a.ID.String(), b.ID.String()) })
	t := newTable(w, "IDENTITY", "SERIAL", "NOT-AFTER", "STATE", "NEXT-FETCH", "ISSUER", "LAST-ERROR")
	for _, c := range certs {
		t.row(c.ID.String(), c.Serial, timeString(c.NotAfter), string(c.State), timeString(c.NextFetch), c.Issuer, c.LastError)
	}
	return t.flush()
}

func printRoots(w io.Writer, d *dump.Ztunnel, _ filter) error {
	t := newTable(w, "FINGERPRINT", "NOT-AFTER", "SUBJECT")
	for _, r := range d.TrustBundle {
		t.row(r.Fingerprint, timeString(r.NotAfter), r.Subject)
	}
	return t.flush()
}

func printPods(w io.Writer, d *dump.Ztunnel, f filter) error {
	pods := slices.Clone(d.Pods)
	slices.SortFunc(pods, func(a, b nodeapi.PodStatus) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	t := newTable(w, "NAMESPACE", "NAME", "UID", "NETNS", "CAPTURED", "REASON")
	for _, p := range pods {
		if !f.keep(p.Namespace) {
			continue
		}
		t.row(p.Namespace, p.Name, p.UID, p.NetNS, strconv.FormatBool(p.Captured), p.Reason)
	}
	return t.flush()
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}
