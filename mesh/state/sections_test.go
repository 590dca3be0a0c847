package state

import (
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/proto"
)

func TestSections(t *testing.T) {
	s := New()
	if err := s.Apply(configv1.WorkloadTypeURL, map[string]proto.Message{
		"b": &configv1.Workload{Uid: "b", Name: "web-2", Namespace: "shop", Addresses: [][]byte{{10, 0, 0, 2}}},
		"a": &configv1.Workload{Uid: "a", Name: "web-1", Namespace: "shop", Addresses: [][]byte{{10, 0, 0, 1}}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	got := s.Sections()
	if len(got.Workloads) != 2 || !strings.Contains(string(got.Workloads[0]), `"web-1"`) || !strings.Contains(string(got.Workloads[1]), `"web-2"`) {
		t.Fatalf("workloads %s, want web-1 then web-2 in protojson", got.Workloads)
	}
	if got.Services == nil || got.Policies == nil || got.Waypoints == nil || len(got.Services) != 0 {
		t.Fatalf("empty sections must be empty lists, not null: %+v", got)
	}
}
