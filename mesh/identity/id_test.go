package identity_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"ambit.dev/mesh/identity"
)

var td = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

func TestWorkloadID(t *testing.T) {
	tests := []struct {
		name    string
		td      spiffeid.TrustDomain
		ns, sa  string
		want    string
		wantErr string
	}{
		{name: "simple", td: td, ns: "default", sa: "bookinfo-productpage", want: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"},
		{name: "sa subdomain", td: td, ns: "a1", sa: "sa.with.dots", want: "spiffe://cluster.local/ns/a1/sa/sa.with.dots"},
		{name: "digits", td: td, ns: "0", sa: "9", want: "spiffe://cluster.local/ns/0/sa/9"},
		{name: "ns 63", td: td, ns: strings.Repeat("a", 63), sa: "x", want: "spiffe://cluster.local/ns/" + strings.Repeat("a", 63) + "/sa/x"},
		{name: "zero trust domain", ns: "a", sa: "b", wantErr: "trust domain is empty"},
		{name: "empty ns", td: td, ns: "", sa: "b", wantErr: `namespace "": must not be empty`},
		{name: "empty sa", td: td, ns: "a", sa: "", wantErr: `service account "": must not be empty`},
		{name: "ns 64", td: td, ns: strings.Repeat("a", 64), sa: "b", wantErr: "at most 63"},
		{name: "ns uppercase", td: td, ns: "Default", sa: "b", wantErr: "invalid character 'D'"},
		{name: "ns dot", td: td, ns: "a.b", sa: "b", wantErr: "invalid character '.'"},
		{name: "ns leading dash", td: td, ns: "-a", sa: "b", wantErr: "start and end"},
		{name: "ns trailing dash", td: td, ns: "a-", sa: "b", wantErr: "start and end"},
		{name: "ns slash", td: td, ns: "a/b", sa: "b", wantErr: "invalid character '/'"},
		{name: "sa underscore", td: td, ns: "a", sa: "my_sa", wantErr: "invalid character '_'"},
		{name: "sa empty part", td: td, ns: "a", sa: "a..b", wantErr: "empty dot-separated part"},
		{name: "sa trailing dot", td: td, ns: "a", sa: "a.", wantErr: "empty dot-separated part"},
		{name: "sa 254", td: td, ns: "a", sa: strings.Repeat("a", 254), wantErr: "at most 253"},
		{name: "sa label dash", td: td, ns: "a", sa: "a.-b", wantErr: "start and end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WorkloadID(%q, %q) error = %v, want containing %q", tt.ns, tt.sa, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("WorkloadID: %v", err)
			}
			if id.String() != tt.want {
				t.Fatalf("WorkloadID = %s, want %s", id, tt.want)
			}
			w := identity.Workload{TrustDomain: tt.td, Namespace: tt.ns, ServiceAccount: tt.sa}
			if w.ID() != id {
				t.Fatalf("Workload.ID() = %s, want %s", w.ID(), id)
			}
			back, err := identity.ParseWorkloadID(id.String())
			if err != nil || back != w {
				t.Fatalf("ParseWorkloadID(%s) = %+v, %v; want %+v", id, back, err, w)
			}
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	tests := []struct {
		in      string
		want    identity.Workload
		wantErr string
	}{
		{in: "spiffe://cluster.local/ns/default/sa/web", want: identity.Workload{TrustDomain: td, Namespace: "default", ServiceAccount: "web"}},
		{in: "spiffe://example.org/ns/prod/sa/api.v2", want: identity.Workload{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Namespace: "prod", ServiceAccount: "api.v2"}},
		{in: "", wantErr: "cannot be empty"},
		{in: "http://cluster.local/ns/a/sa/b", wantErr: "scheme"},
		{in: "spiffe://cluster.local", wantErr: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{in: "spiffe://cluster.local/ns/a", wantErr: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{in: "spiffe://cluster.local/ns/a/sa/b/extra", wantErr: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{in: "spiffe://cluster.local/sa/b/ns/a", wantErr: "is not /ns/<namespace>/sa/<serviceaccount>"},
		{in: "spiffe://cluster.local/ns/A/sa/b", wantErr: `namespace "A"`},
		{in: "spiffe://cluster.local/ns/a/sa/b_c", wantErr: `service account "b_c"`},
		{in: "spiffe://cluster.local/ns//sa/b", wantErr: "empty segment"},
		{in: "spiffe://cluster.local/ns/a/sa/b?x=1", wantErr: "path segment"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := identity.ParseWorkloadID(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseWorkloadID(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseWorkloadID(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if got.ID().String() != tt.in {
				t.Fatalf("round trip = %s, want %s", got.ID(), tt.in)
			}
		})
	}
}

func TestWorkloadInvalidIDIsZero(t *testing.T) {
	if id := (identity.Workload{TrustDomain: td, Namespace: "Bad", ServiceAccount: "x"}).ID(); !id.IsZero() {
		t.Fatalf("ID() of invalid workload = %s, want zero", id)
	}
}

type wl struct{ td, ns, sa string }

func (w wl) GetTrustDomain() string    { return w.td }
func (w wl) GetNamespace() string      { return w.ns }
func (w wl) GetServiceAccount() string { return w.sa }

func TestWorkloadIdentity(t *testing.T) {
	fallback := spiffeid.RequireTrustDomainFromString("cluster.local")
	for _, tt := range []struct {
		w    wl
		want string
	}{
		{wl{"", "shop", "web"}, "spiffe://cluster.local/ns/shop/sa/web"},
		{wl{"other.example", "shop", "web"}, "spiffe://other.example/ns/shop/sa/web"},
	} {
		id, err := identity.WorkloadIdentity(tt.w, fallback)
		if err != nil || id.String() != tt.want {
			t.Fatalf("%+v: %v, %v; want %s", tt.w, id, err, tt.want)
		}
	}
	for _, bad := range []wl{{"Not A Domain", "shop", "web"}, {"", "", "web"}, {"", "shop", ""}} {
		if id, err := identity.WorkloadIdentity(bad, fallback); err == nil {
			t.Fatalf("%+v: got %v, want an error", bad, id)
		}
	}
}
