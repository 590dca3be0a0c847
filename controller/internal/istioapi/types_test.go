package istioapi

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// TestIstioFieldNames pins the JSON fields of the types that reuse ambit's security.ambit.dev
// shapes to Istio's (istio.io/api security/v1beta1 and type/v1beta1), so that a field added to
// ambit's types fails here instead of widening Istio's schema.
func TestIstioFieldNames(t *testing.T) {
	for _, tc := range []struct {
		typ  any
		want []string
	}{
		{Source{}, []string{"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces", "notNamespaces",
			"serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks", "trustDomains", "notTrustDomains"}},
		{Operation{}, []string{"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}},
		{PolicyTargetReference{}, []string{"group", "kind", "name", "namespace"}},
		{WorkloadSelector{}, []string{"matchLabels"}},
		{MutualTLS{}, []string{"mode"}},
		{TrafficPolicy{}, []string{"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel", "proxyProtocol", "retryBudget"}},
		{PortTrafficPolicy{}, []string{"port", "loadBalancer", "connectionPool", "outlierDetection", "tls"}},
	} {
		typ := reflect.TypeOf(tc.typ)
		got, want := jsonNames(typ), slices.Clone(tc.want)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: JSON fields %v, want Istio's %v", typ.Name(), got, want)
		}
	}
}

// jsonNames lists the JSON names of t's fields as encoding/json sees them: the fields of an
// embedded struct without a tag are the outer struct's.
func jsonNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			names = append(names, jsonNames(f.Type)...)
			continue
		}
		if name, _, _ := strings.Cut(tag, ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// TestStrictDecodeSharedShapes: the shapes shared with ambit's types decode inline, and an
// unknown field inside them is still refused.
func TestStrictDecodeSharedShapes(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
	const ap = `{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "a", "namespace": "n"},
	"spec": {"selector": {"matchLabels": {"app": "web"}}, "targetRefs": [{"kind": "Service", "name": "web", "namespace": "n"}],
	"rules": [{"from": [{"source": {"principals": ["p"], "serviceAccounts": ["n/sa"], "notIpBlocks": ["10.0.0.0/8"]}}],
	"to": [{"operation": {"methods": ["GET"], "hosts": ["h"], "notPorts": ["9090"]}}]}]}}`
	obj, _, err := dec.Decode([]byte(ap), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sp := obj.(*AuthorizationPolicy).Spec
	src, op, ref := sp.Rules[0].From[0].Source, sp.Rules[0].To[0].Operation, sp.TargetRefs[0]
	if sp.Selector.MatchLabels["app"] != "web" || ref.Kind != "Service" || ref.Name != "web" || ref.Namespace != "n" ||
		src.Principals[0] != "p" || src.ServiceAccounts[0] != "n/sa" || src.NotIPBlocks[0] != "10.0.0.0/8" ||
		op.Methods[0] != "GET" || op.Hosts[0] != "h" || op.NotPorts[0] != "9090" {
		t.Fatalf("decoded %+v", sp)
	}
	for _, tc := range []struct{ beside, path string }{
		{`"principals": ["p"]`, "spec.rules[0].from[0].source.unknownField"},
		{`"methods": ["GET"]`, "spec.rules[0].to[0].operation.unknownField"},
		{`"kind": "Service"`, "spec.targetRefs[0].unknownField"},
	} {
		_, _, err := dec.Decode([]byte(strings.Replace(ap, tc.beside, tc.beside+`, "unknownField": 1`, 1)), nil, nil)
		if err == nil || !strings.Contains(err.Error(), `unknown field "`+tc.path+`"`) {
			t.Errorf("unknown field beside %s: error %v, want one naming %s", tc.beside, err, tc.path)
		}
	}
}
