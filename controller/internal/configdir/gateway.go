package configdir

import (
	"bytes"
	"fmt"
	"net/netip"

	yaml "go.yaml.in/yaml/v3"
)

// SetGatewayAddress records addr as the only address in status.addresses of Gateway
// namespace/name wherever the folder defines it, the way a Kubernetes controller writes a
// Gateway's status: the lab does it once the waypoint's pod runs. Other status fields stay as
// they are; a Gateway defined nowhere is an error.
func SetGatewayAddress(dir, namespace, name string, addr netip.Addr) (Result, error) {
	obj := Object{Kind: "Gateway", Namespace: namespace, Name: name}
	if !addr.IsValid() {
		return Result{}, fmt.Errorf("%s: no address to record", obj)
	}
	return update(dir, obj, func(body []byte) ([]byte, bool, error) { return setStatusAddress(body, addr.String()) },
		func() (string, error) { return "", fmt.Errorf("%s is defined in no file of %s", obj, dir) })
}

func setStatusAddress(body []byte, addr string) ([]byte, bool, error) {
	doc, err := parse(body)
	if err != nil || doc == nil {
		return nil, false, fmt.Errorf("reparse: %v", err)
	}
	root := doc.Content[0]
	status := lookup(root, "status")
	switch {
	case status == nil || (status.Kind == yaml.ScalarNode && status.Tag == "!!null"):
		status = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		if i := index(root, "status"); i >= 0 {
			root.Content[i+1] = status
		} else {
			root.Content = append(root.Content, str("status"), status)
		}
	case status.Kind != yaml.MappingNode || status.Anchor != "":
		return nil, false, fmt.Errorf("status is not a plain mapping")
	}
	if old := lookup(status, "addresses"); old != nil && old.Kind == yaml.SequenceNode && len(old.Content) == 1 {
		a := old.Content[0]
		if t, v := lookup(a, "type"), lookup(a, "value"); a.Kind == yaml.MappingNode && t != nil && v != nil &&
			t.Value == "IPAddress" && v.Value == addr && len(a.Content) == 4 {
			return body, false, nil
		}
	}
	addrs := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Content: []*yaml.Node{{
		Kind: yaml.MappingNode, Tag: "!!map",
		Content: []*yaml.Node{str("type"), str("IPAddress"), str("value"), str(addr)},
	}}}
	if i := index(status, "addresses"); i >= 0 {
		status.Content[i+1] = addrs
	} else {
		status.Content = append(status.Content, str("addresses"), addrs)
	}
	b, err := encode(doc)
	return b, err == nil, err
}

func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// encode writes a document back the way the edits do: two-space indent.
func encode(doc *yaml.Node) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return b.Bytes(), nil
}
