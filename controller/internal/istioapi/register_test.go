package istioapi

import (
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestSchemeHasEveryVersion(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for kind := range Resources {
		for _, v := range VersionsOf(kind) {
			gvk := schema.GroupVersionKind{Group: GroupOf(kind), Version: v, Kind: kind}
			if !s.Recognizes(gvk) || !s.Recognizes(gvk.GroupVersion().WithKind(kind+"List")) {
				t.Errorf("%v (or its list) not registered", gvk)
			}
		}
	}
}

func TestDeepCopy(t *testing.T) {
	pct := uint32(5)
	in := &VirtualService{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo", Labels: map[string]string{"a": "b"}},
		Spec: VirtualServiceSpec{Hosts: []string{"web"}, HTTP: []HTTPRoute{{
			Match:         []HTTPMatchRequest{{Headers: map[string]StringMatch{"x": {Exact: "y"}}}},
			Route:         []HTTPRouteDestination{{Destination: Destination{Host: "web", Subset: "v1"}, Weight: 100}},
			MirrorPercent: &pct, DirectResponse: &HTTPDirectResponse{Status: 200, Body: &HTTPBody{Bytes: []byte{0, 1}}},
		}}}}
	out := in.DeepCopyObject().(*VirtualService)
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("copy differs:\n%+v\n%+v", in, out)
	}
	out.Spec.HTTP[0].Route[0].Destination.Subset = "v2"
	*out.Spec.HTTP[0].MirrorPercent = 6
	if in.Spec.HTTP[0].Route[0].Destination.Subset != "v1" || *in.Spec.HTTP[0].MirrorPercent != 5 {
		t.Fatal("the copy shares memory with the original")
	}
}
