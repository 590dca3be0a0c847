package routestatus

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"ambit.dev/controller/internal/istioapi"
	"ambit.dev/controller/internal/source"
)

func TestPolicyConditions(t *testing.T) {
	now := metav1.NewTime(time.Unix(1000, 0))
	for _, tc := range []struct {
		name               string
		p                  Policy
		accepted, resolved metav1.ConditionStatus
		reason, msg        string
	}{
		{"valid", Policy{HasRefs: true}, "True", "True", ReasonAccepted, ""},
		{"no references", Policy{}, "True", "", ReasonAccepted, ""},
		{"decode refused", Policy{HasRefs: true, Problems: []source.Problem{{Object: "x", Error: `unknown field "spec.http[0].timout"`}}},
			"False", "True", ReasonInvalid, `unknown field "spec.http[0].timout"`},
		{"invalid field", Policy{Problems: []source.Problem{{Field: "spec.rules[0].to[0].operation.ports[0]", Error: "not a port"}}},
			"False", "", ReasonInvalid, "spec.rules[0].to[0].operation.ports[0]: not a port"},
		{"partial", Policy{Problems: []source.Problem{{Field: "spec.rules[1].from[0].source.requestPrincipals", Error: "not enforced", Partial: true}}},
			"True", "", ReasonPartiallyInvalid, "in force but for: spec.rules[1].from[0].source.requestPrincipals"},
		{"subset unresolved", Policy{HasRefs: true, Problems: []source.Problem{{Field: "spec.http[0].route[0].destination.subset", Error: `"v2" is not a subset`, Unresolved: true}}},
			"False", "False", ReasonUnresolvedRefs, "spec.http[0].route[0].destination.subset"},
		{"host missing", Policy{HasRefs: true, Missing: []string{"spec.host: Service demo/gone"}}, "True", "False", ReasonAccepted, "spec.host: Service demo/gone"},
		{"invalid wins over partial", Policy{Problems: []source.Problem{{Field: "a", Error: "bad"}, {Field: "b", Error: "left out", Partial: true}}},
			"False", "", ReasonInvalid, "a: bad"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Generation = 4
			got := PolicyConditions(tc.p, now)
			byType := map[string]metav1.Condition{}
			for _, c := range got {
				byType[c.Type] = c
				if c.ObservedGeneration != 4 || !c.LastTransitionTime.Equal(&now) {
					t.Errorf("%s: generation %d, time %v", c.Type, c.ObservedGeneration, c.LastTransitionTime)
				}
			}
			a, r := byType[Accepted], byType[ResolvedRefs]
			if a.Status != tc.accepted || a.Reason != tc.reason || r.Status != tc.resolved {
				t.Fatalf("conditions %+v", got)
			}
			if tc.msg != "" && !strings.Contains(a.Message, tc.msg) && !strings.Contains(r.Message, tc.msg) {
				t.Errorf("no message names %q: %+v", tc.msg, got)
			}
		})
	}
}

// TestPolicyConditionsTransitionTime: lastTransitionTime moves when a condition's status
// flips, not when only its reason or message changes.
func TestPolicyConditionsTransitionTime(t *testing.T) {
	t0, t1, t2 := metav1.NewTime(time.Unix(1000, 0)), metav1.NewTime(time.Unix(2000, 0)), metav1.NewTime(time.Unix(3000, 0))
	first := PolicyConditions(Policy{Generation: 1}, t0)
	partial := PolicyConditions(Policy{Generation: 2, Conditions: first,
		Problems: []source.Problem{{Field: "spec.action", Error: "CUSTOM", Partial: true}}}, t1)
	if !ConditionsEqual(partial, partial) || ConditionsEqual(first, partial) {
		t.Fatal("ConditionsEqual does not tell the two apart")
	}
	if partial[0].Reason != ReasonPartiallyInvalid || !partial[0].LastTransitionTime.Equal(&t0) {
		t.Errorf("still True, new reason: %+v, want the time of the first", partial[0])
	}
	refused := PolicyConditions(Policy{Generation: 3, Conditions: partial, Problems: []source.Problem{{Field: "spec.action", Error: "bad"}}}, t2)
	if refused[0].Status != metav1.ConditionFalse || !refused[0].LastTransitionTime.Equal(&t2) {
		t.Errorf("flipped to False: %+v, want the time of the flip", refused[0])
	}
}

// TestReadStatus: the status Istio writes reads (observedGeneration as a string, as
// protobuf's JSON writes an int64), and the conditions of other types are kept as they are.
func TestReadStatus(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"status": map[string]any{
			"observedGeneration": "7",
			"validationMessages": []any{map[string]any{"level": "WARNING", "type": map[string]any{"code": "IST0101"}}},
			"conditions": []any{
				map[string]any{"type": "Reconciled", "status": "True", "lastProbeTime": "2026-01-01T00:00:00Z"},
				map[string]any{"type": "Accepted", "status": "False", "reason": "Invalid", "message": "m",
					"lastTransitionTime": "2026-01-02T00:00:00Z", "observedGeneration": "7"},
			},
		},
	}}
	ours, others, observed := readStatus(u)
	if observed != 7 || len(ours) != 1 || ours[0].Type != Accepted || ours[0].Status != "False" || ours[0].ObservedGeneration != 7 ||
		ours[0].LastTransitionTime.Time.Day() != 2 {
		t.Fatalf("ours %+v, observed %d", ours, observed)
	}
	if len(others) != 1 || others[0].(map[string]any)["type"] != "Reconciled" || others[0].(map[string]any)["lastProbeTime"] == nil {
		t.Fatalf("others %+v", others)
	}
	var st istioapi.IstioStatus
	if err := st.ObservedGeneration.UnmarshalJSON([]byte(`12`)); err != nil || st.ObservedGeneration != 12 {
		t.Fatalf("a number: %v, %d", err, st.ObservedGeneration)
	}
	if err := st.ObservedGeneration.UnmarshalJSON([]byte(`"x"`)); err == nil {
		t.Fatal("a string that is no number read")
	}
}

// fakeVerdicts is a Store's verdicts as the test sets them.
type fakeVerdicts struct {
	synced   bool
	problems []source.Problem
	gens     map[string]int64
}

func (f *fakeVerdicts) Problems() []source.Problem        { return f.problems }
func (f *fakeVerdicts) SubscribeCommits() <-chan struct{} { return nil }
func (f *fakeVerdicts) Synced() bool                      { return f.synced }
func (f *fakeVerdicts) Generations() map[string]int64     { return f.gens }

// TestProblemIndexRefresh: a commit names only the objects whose verdict or generation
// changed, every object once the model syncs, and no verdict is given before, or for a
// generation the model has not read.
func TestProblemIndexRefresh(t *testing.T) {
	const vs, ap = "VirtualService.networking.istio.io demo/web", "AuthorizationPolicy demo/allow"
	v := &fakeVerdicts{gens: map[string]int64{vs: 1, ap: 1}, problems: []source.Problem{{Object: vs, Field: "spec.hosts", Error: "bad"}}}
	x := &problemIndex{}
	if _, all := x.refresh(v); all {
		t.Fatal("all before the model synced")
	}
	if _, ok := x.of(vs, 1); ok {
		t.Fatal("a verdict before the model synced")
	}
	v.synced = true
	if _, all := x.refresh(v); !all {
		t.Fatal("not all when the model synced")
	}
	if p, ok := x.of(vs, 1); !ok || len(p) != 1 {
		t.Fatalf("verdict %v, %v", p, ok)
	}
	if _, ok := x.of(vs, 2); ok {
		t.Fatal("a verdict for a generation the model has not read")
	}
	if changed, all := x.refresh(v); all || len(changed) != 0 {
		t.Fatalf("nothing changed, yet %v (all %v)", changed, all)
	}
	v.problems = nil // the VirtualService fixed, same generation (a DestinationRule came)
	if changed, _ := x.refresh(v); len(changed) != 1 || changed[0] != vs {
		t.Fatalf("changed %v, want the VirtualService", changed)
	}
	v.gens = map[string]int64{vs: 1, ap: 2}
	if changed, _ := x.refresh(v); len(changed) != 1 || changed[0] != ap {
		t.Fatalf("changed %v, want the policy of the new generation", changed)
	}
}
