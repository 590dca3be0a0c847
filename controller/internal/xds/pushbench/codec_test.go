package main

import (
	"testing"

	"ambit.dev/controller/internal/xds"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	configv1 "ambit.dev/proto/config/v1"
	corev3 "ambit.dev/proto/xds/core/v3"
	discoveryv3 "ambit.dev/proto/xds/discovery/v3"
)

// The hand decoder must give what protobuf-go gives, for what the controller sends and for
// what it does not (then protobuf-go decodes it).
func TestClientCodec(t *testing.T) {
	mm, err := newModelMesh(300, 30, 3)
	if err != nil {
		t.Fatal(err)
	}
	full := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "7", TypeUrl: configv1.WorkloadTypeURL, Nonce: "d1"}
	for name, r := range mm.For(xds.Proxy{ID: "z", Node: nodeName(0), Kind: "ztunnel"})[configv1.WorkloadTypeURL] {
		a, err := anypb.New(r.Message)
		if err != nil {
			t.Fatal(err)
		}
		full.Resources = append(full.Resources, &discoveryv3.Resource{Name: name, Version: r.Version, Resource: a})
	}
	withTTL := proto.Clone(full).(*discoveryv3.DeltaDiscoveryResponse)
	withTTL.Resources[0].Ttl = durationpb.New(5)
	withCP := proto.Clone(full).(*discoveryv3.DeltaDiscoveryResponse)
	withCP.ControlPlane = &corev3.ControlPlane{Identifier: "x"}
	cases := map[string]proto.Message{
		"full state":            full,
		"removals":              &discoveryv3.DeltaDiscoveryResponse{TypeUrl: configv1.ServiceTypeURL, Nonce: "3", RemovedResources: []string{"a", "b"}},
		"empty":                 &discoveryv3.DeltaDiscoveryResponse{},
		"ttl":                   withTTL,
		"control plane":         withCP,
		"resource without body": &discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{Name: "n", Version: "1"}}},
	}
	c := newClientCodec()
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			var got discoveryv3.DeltaDiscoveryResponse
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, want) {
				t.Errorf("decoded %v\nwant %v", &got, want)
			}
		})
	}
	for name, b := range map[string][]byte{
		"truncated":  {0x12, 0x05, 0x1a},
		"bad utf-8":  {0x22, 0x02, 0xff, 0xfe},
		"bad varint": {0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	} {
		t.Run(name, func(t *testing.T) {
			var m discoveryv3.DeltaDiscoveryResponse
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &m); err == nil {
				t.Errorf("decoded %v, want an error", &m)
			}
		})
	}
}

func BenchmarkClientCodec(b *testing.B) {
	mm, err := newModelMesh(10000, 1000, 100)
	if err != nil {
		b.Fatal(err)
	}
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: configv1.WorkloadTypeURL, Nonce: "d1"}
	for name, r := range mm.For(xds.Proxy{ID: "z", Node: nodeName(0), Kind: "ztunnel"})[configv1.WorkloadTypeURL] {
		a, _ := anypb.New(r.Message)
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: name, Version: r.Version, Resource: a})
	}
	data, _ := proto.Marshal(resp)
	for name, c := range map[string]interface {
		Unmarshal(mem.BufferSlice, any) error
	}{"hand": newClientCodec(), "protobuf-go": newClientCodec().std} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				var m discoveryv3.DeltaDiscoveryResponse
				if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
