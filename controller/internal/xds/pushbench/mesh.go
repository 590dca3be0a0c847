package main

import (
	"fmt"
	"maps"
	"strconv"
	"sync"

	"ambit.dev/controller/internal/xds"
	configv1 "ambit.dev/proto/config/v1"
)

// nodes is how many nodes the mesh's pods are spread over; one proxy per node.
func nodeName(i int) string { return "node-" + strconv.Itoa(i) }

// mesh is the in-benchmark Generator: every proxy gets every workload and Service.
type mesh struct {
	mu  sync.Mutex
	res map[string]map[string]xds.Resource
}

func newMesh(pods, services, nodes int) *mesh {
	wls := make(map[string]xds.Resource, pods)
	for i := range pods {
		w := workload(i, services, nodes, 1)
		wls[w.Uid] = xds.Resource{Version: "1", Message: w}
	}
	svcs := make(map[string]xds.Resource, services)
	for i := range services {
		ns := fmt.Sprintf("ns-%d", i%50)
		host := fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, ns)
		svcs[ns+"/"+host] = xds.Resource{Version: "1", Message: &configv1.Service{
			Name: fmt.Sprintf("svc-%d", i), Namespace: ns, Hostname: host,
			Addresses: []*configv1.NetworkAddress{{Address: []byte{10, 96, byte(i >> 8), byte(i)}}},
			Ports:     []*configv1.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: configv1.AppProtocol_HTTP}},
		}}
	}
	return &mesh{res: map[string]map[string]xds.Resource{
		configv1.WorkloadTypeURL: wls,
		configv1.ServiceTypeURL:  svcs,
	}}
}

func workload(i, services, nodes, gen int) *configv1.Workload {
	s := i % services
	ns := fmt.Sprintf("ns-%d", s%50)
	host := fmt.Sprintf("svc-%d.%s.svc.cluster.local", s, ns)
	name := fmt.Sprintf("app-%d-%d", s, i)
	return &configv1.Workload{
		Uid:               "Kubernetes//Pod/" + ns + "/" + name,
		Name:              name,
		Namespace:         ns,
		Node:              nodeName(i % nodes),
		Addresses:         [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}},
		ServiceAccount:    fmt.Sprintf("app-%d", s),
		WorkloadName:      fmt.Sprintf("app-%d", s),
		CanonicalService:  fmt.Sprintf("app-%d", s),
		CanonicalRevision: "v" + strconv.Itoa(gen),
		Labels:            map[string]string{"app": fmt.Sprintf("app-%d", s), "version": "v" + strconv.Itoa(gen)},
		Services:          map[string]*configv1.PortList{ns + "/" + host: {Ports: []*configv1.Port{{ServicePort: 80, TargetPort: 8080}}}},
		TunnelProtocol:    configv1.TunnelProtocol_HBONE,
	}
}

func (m *mesh) For(xds.Proxy) map[string]map[string]xds.Resource {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.res
}

// change gives workload i a new version (as a pod relabel or restart would) and returns its
// resource name and version.
func (m *mesh) change(i, services, nodes, gen int) (string, string) {
	w := workload(i, services, nodes, gen)
	v := strconv.Itoa(gen)
	m.mu.Lock()
	defer m.mu.Unlock()
	wls := maps.Clone(m.res[configv1.WorkloadTypeURL])
	wls[w.Uid] = xds.Resource{Version: v, Message: w}
	next := maps.Clone(m.res)
	next[configv1.WorkloadTypeURL] = wls
	m.res = next
	return w.Uid, v
}
