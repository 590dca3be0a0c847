package discoveryv3_test

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	corev3 "ambit.dev/proto/xds/core/v3"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
)

// Our messages cannot be compared with go-control-plane's in one binary (both register the
// same full names), so the test compares with Envoy's definitions as written down here: each
// field's number and wire type, transcribed from envoyproxy/envoy
// api/envoy/service/discovery/v3/discovery.proto (DeltaDiscoveryRequest,
// DeltaDiscoveryResponse, Resource), api/envoy/config/core/v3/base.proto (Node,
// ControlPlane) and, for error_detail, googleapis google/rpc/status.proto (Status). A wrong
// number or type in our .proto files makes the bytes differ from these.

// field is one field on the wire as Envoy defines it, with the value the test gives it.
type field struct {
	name string // Envoy's name; the fields of each message of ours must all be here
	num  protowire.Number
	typ  protowire.Type
	str  string  // the content of a string or bytes field
	u64  uint64  // the value of a varint field
	msg  string  // for an embedded message: its full name in Envoy
	sub  []field // and its fields
}

func str(name string, num protowire.Number, v string) field {
	return field{name: name, num: num, typ: protowire.BytesType, str: v}
}

func varint(name string, num protowire.Number, v uint64) field {
	return field{name: name, num: num, typ: protowire.VarintType, u64: v}
}

func msg(name string, num protowire.Number, full string, sub ...field) field {
	return field{name: name, num: num, typ: protowire.BytesType, msg: full, sub: sub}
}

// anyOf is a google.protobuf.Any as Envoy's messages embed it.
func anyOf(name string, num protowire.Number, typeURL, value string) field {
	return msg(name, num, "google.protobuf.Any", str("type_url", 1, typeURL), str("value", 2, value))
}

const workloadType = "type.googleapis.com/ambit.config.v1.Workload"

func populatedRequest() (*discoveryv3.DeltaDiscoveryRequest, []field) {
	m := &discoveryv3.DeltaDiscoveryRequest{
		Node: &corev3.Node{
			Id:       "ztunnel~node-1",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"NODE_NAME": structpb.NewStringValue("node-1")}},
		},
		TypeUrl:                 workloadType,
		ResourceNamesSubscribe:  []string{"*", "w9"},
		InitialResourceVersions: map[string]string{"w1": "7"},
		ResponseNonce:           "n1",
		ErrorDetail: &discoveryv3.Status{
			Code:    3,
			Message: "bad address",
			Details: []*anypb.Any{{TypeUrl: "type.googleapis.com/x.Detail", Value: []byte("d")}},
		},
	}
	wire := []field{
		msg("node", 1, "envoy.config.core.v3.Node",
			str("id", 1, "ztunnel~node-1"),
			msg("metadata", 3, "google.protobuf.Struct",
				msg("fields", 1, "google.protobuf.Struct.FieldsEntry",
					str("key", 1, "NODE_NAME"),
					msg("value", 2, "google.protobuf.Value", str("string_value", 3, "node-1"))))),
		str("type_url", 2, workloadType),
		str("resource_names_subscribe", 3, "*"),
		str("resource_names_subscribe", 3, "w9"),
		msg("initial_resource_versions", 5, "envoy.service.discovery.v3.DeltaDiscoveryRequest.InitialResourceVersionsEntry",
			str("key", 1, "w1"), str("value", 2, "7")),
		str("response_nonce", 6, "n1"),
		msg("error_detail", 7, "google.rpc.Status",
			varint("code", 1, 3),
			str("message", 2, "bad address"),
			anyOf("details", 3, "type.googleapis.com/x.Detail", "d")),
	}
	return m, wire
}

func populatedResponse() (*discoveryv3.DeltaDiscoveryResponse, []field) {
	m := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: "42",
		Resources: []*discoveryv3.Resource{{
			Name:     "w1",
			Version:  "7",
			Resource: &anypb.Any{TypeUrl: workloadType, Value: []byte("body")},
			Ttl:      &durationpb.Duration{Seconds: 5, Nanos: 6},
		}},
		TypeUrl:          workloadType,
		RemovedResources: []string{"w2", "w3"},
		Nonce:            "n2",
		ControlPlane:     &corev3.ControlPlane{Identifier: "controller-0"},
	}
	wire := []field{
		str("system_version_info", 1, "42"),
		msg("resources", 2, "envoy.service.discovery.v3.Resource",
			str("version", 1, "7"),
			anyOf("resource", 2, workloadType, "body"),
			str("name", 3, "w1"),
			msg("ttl", 6, "google.protobuf.Duration", varint("seconds", 1, 5), varint("nanos", 2, 6))),
		str("type_url", 4, workloadType),
		str("nonce", 5, "n2"),
		str("removed_resources", 6, "w2"),
		str("removed_resources", 6, "w3"),
		msg("control_plane", 7, "envoy.config.core.v3.ControlPlane", str("identifier", 1, "controller-0")),
	}
	return m, wire
}

func TestWireMatchesEnvoy(t *testing.T) {
	req, reqWire := populatedRequest()
	resp, respWire := populatedResponse()
	for _, tc := range []struct {
		m    proto.Message
		wire []field
	}{
		{req, reqWire},
		{resp, respWire},
	} {
		name := string(tc.m.ProtoReflect().Descriptor().Name())
		t.Run(name, func(t *testing.T) {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range compare(name, b, tc.wire) {
				t.Error(p)
			}
		})
	}
}

// TestEveryFieldChecked fails when a field is declared in our .proto files that
// TestWireMatchesEnvoy does not check against Envoy's number.
func TestEveryFieldChecked(t *testing.T) {
	_, reqWire := populatedRequest()
	_, respWire := populatedResponse()
	checked := map[string]bool{} // Envoy message name (ours for Status), field name
	var walk func(parent string, fs []field)
	walk = func(parent string, fs []field) {
		for _, f := range fs {
			checked[parent+"."+f.name] = true
			if f.msg != "" {
				walk(f.msg, f.sub)
			}
		}
	}
	walk("envoy.service.discovery.v3.DeltaDiscoveryRequest", reqWire)
	walk("envoy.service.discovery.v3.DeltaDiscoveryResponse", respWire)
	for _, m := range []proto.Message{
		&discoveryv3.DeltaDiscoveryRequest{}, &discoveryv3.DeltaDiscoveryResponse{},
		&discoveryv3.Resource{}, &discoveryv3.Status{},
		&corev3.Node{}, &corev3.ControlPlane{},
	} {
		d := m.ProtoReflect().Descriptor()
		full := string(d.FullName())
		if d.Name() == "Status" {
			full = "google.rpc.Status" // Envoy's type of error_detail
		}
		fields := d.Fields()
		for i := range fields.Len() {
			if f := fields.Get(i); !checked[full+"."+string(f.Name())] {
				t.Errorf("%s.%s (number %d) is not checked against Envoy's definition", full, f.Name(), f.Number())
			}
		}
	}
}

// TestCompareCatchesWrongNumber makes sure compare fails on the mistakes it is there for.
func TestCompareCatchesWrongNumber(t *testing.T) {
	want := []field{str("type_url", 2, workloadType), varint("code", 1, 3)}
	good := protowire.AppendTag(nil, 2, protowire.BytesType)
	good = protowire.AppendString(good, workloadType)
	good = protowire.AppendTag(good, 1, protowire.VarintType)
	good = protowire.AppendVarint(good, 3)
	if p := compare("good", good, want); len(p) != 0 {
		t.Fatalf("compare reports %q for matching bytes", p)
	}
	wrongNumber := protowire.AppendTag(nil, 3, protowire.BytesType)
	wrongNumber = protowire.AppendString(wrongNumber, workloadType)
	wrongNumber = protowire.AppendTag(wrongNumber, 1, protowire.VarintType)
	wrongNumber = protowire.AppendVarint(wrongNumber, 3)
	wrongType := protowire.AppendTag(nil, 2, protowire.BytesType)
	wrongType = protowire.AppendString(wrongType, workloadType)
	wrongType = protowire.AppendTag(wrongType, 1, protowire.Fixed32Type)
	wrongType = protowire.AppendFixed32(wrongType, 3)
	for name, b := range map[string][]byte{"wrong number": wrongNumber, "wrong type": wrongType} {
		if p := compare(name, b, want); len(p) == 0 {
			t.Errorf("%s: compare reports nothing", name)
		}
	}
}

// compare walks the message b and reports every difference from want: a field that Envoy
// does not have at that number, one of another wire type or value, and one that is missing.
// Repeated fields are matched in order.
func compare(path string, b []byte, want []field) []string {
	var problems []string
	used := make([]bool, len(want))
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return append(problems, fmt.Sprintf("%s: bad tag: %v", path, protowire.ParseError(n)))
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return append(problems, fmt.Sprintf("%s: field %d: %v", path, num, protowire.ParseError(n)))
		}
		val := b[:n]
		b = b[n:]
		i := slices.IndexFunc(want, func(f field) bool { return f.num == num })
		for i >= 0 && used[i] {
			j := slices.IndexFunc(want[i+1:], func(f field) bool { return f.num == num })
			if j < 0 {
				i = -1
				break
			}
			i += 1 + j
		}
		if i < 0 {
			problems = append(problems, fmt.Sprintf("%s: field %d (wire type %d) is not in Envoy's message, or once too often", path, num, typ))
			continue
		}
		used[i] = true
		f := want[i]
		fpath := path + "." + f.name
		if typ != f.typ {
			problems = append(problems, fmt.Sprintf("%s (%d): wire type %d, Envoy's is %d", fpath, num, typ, f.typ))
			continue
		}
		switch {
		case typ == protowire.VarintType:
			if v, _ := protowire.ConsumeVarint(val); v != f.u64 {
				problems = append(problems, fmt.Sprintf("%s (%d): %d, want %d", fpath, num, v, f.u64))
			}
		case f.msg != "":
			v, _ := protowire.ConsumeBytes(val)
			problems = append(problems, compare(fpath, v, f.sub)...)
		default:
			if v, _ := protowire.ConsumeBytes(val); string(v) != f.str {
				problems = append(problems, fmt.Sprintf("%s (%d): %q, want %q", fpath, num, v, f.str))
			}
		}
	}
	for i, f := range want {
		if !used[i] {
			problems = append(problems, fmt.Sprintf("%s.%s (%d): missing", path, f.name, f.num))
		}
	}
	return problems
}
