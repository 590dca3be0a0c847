package state

import (
	"encoding/json"
	"sort"

	configv1 "ambit.dev/proto/config/v1"
	"ambit.dev/proto/dump"
	"google.golang.org/protobuf/encoding/protojson"
)

// Sections returns the state's resources for /config_dump.
func (s *State) Sections() dump.Sections {
	var out dump.Sections
	all := s.Dump()
	for typeURL, dst := range map[string]*[]json.RawMessage{
		configv1.WorkloadTypeURL: &out.Workloads, configv1.ServiceTypeURL: &out.Services,
		configv1.AuthorizationTypeURL: &out.Policies, configv1.WaypointTypeURL: &out.Waypoints,
	} {
		*dst = []json.RawMessage{}
		names := make([]string, 0, len(all[typeURL]))
		for k := range all[typeURL] {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if b, err := protojson.Marshal(all[typeURL][k]); err == nil {
				*dst = append(*dst, b)
			}
		}
	}
	return out
}
