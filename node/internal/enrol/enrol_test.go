package enrol

import "testing"

func TestIsAmbient(t *testing.T) {
	amb := map[string]string{Label: Ambient}
	istio := map[string]string{IstioLabel: Ambient}
	none := map[string]string{Label: "none"}
	for _, tc := range []struct {
		name    string
		pod, ns map[string]string
		want    bool
	}{
		{"nothing", nil, nil, false},
		{"namespace", nil, amb, true},
		{"istio namespace", nil, istio, true},
		{"pod", amb, nil, true},
		{"istio pod", istio, nil, true},
		{"pod opts out", none, amb, false},
		{"ambit label wins over istio's", map[string]string{Label: "none", IstioLabel: Ambient}, nil, false},
		{"other namespace value", nil, map[string]string{Label: "sidecar"}, false},
	} {
		if got := IsAmbient(tc.pod, tc.ns); got != tc.want {
			t.Errorf("%s: IsAmbient = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := WorkloadUID("shop", "web-1"); got != "Kubernetes//Pod/shop/web-1" {
		t.Errorf("WorkloadUID = %q", got)
	}
}
