package caserver

import (
	"context"
	"errors"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The Kubernetes API is a process edge: a fake clientset answers TokenReviews here; the
// end-to-end tests run the same code against a real API server.
func TestKubeAuthenticator(t *testing.T) {
	ztunnel := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ambit-system", Name: "ztunnel-x", UID: "uid-1"},
		Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "ztunnel"},
	}
	waypointPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "wp-7f9", UID: "uid-2"},
		Spec:       corev1.PodSpec{NodeName: "node-b", ServiceAccountName: "wp"},
	}
	const saUser = "system:serviceaccount:ambit-system:ztunnel"
	const wpUser = "system:serviceaccount:shop:wp"
	tests := []struct {
		name     string
		review   authnv1.TokenReviewStatus
		reviewEr error
		want     Caller
		unauth   bool // the error must wrap ErrUnauthenticated
	}{
		{name: "node-name extra", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: saUser, Extra: map[string]authnv1.ExtraValue{ExtraNodeName: {"node-z"}}}}, want: Caller{Node: "node-z"}},
		{name: "pod-name extra and pod lookup", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: saUser, Extra: map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-x"}, ExtraPodUID: {"uid-1"}}}}, want: Caller{Node: "node-a"}},
		{name: "pod uid mismatch", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: saUser, Extra: map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-x"}, ExtraPodUID: {"uid-old"}}}}, unauth: true},
		{name: "pod gone", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: saUser, Extra: map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-gone"}}}}, unauth: true},
		{name: "not bound to a pod", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: saUser}}, unauth: true},
		{name: "workload service account", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: "system:serviceaccount:shop:web", Extra: map[string]authnv1.ExtraValue{ExtraNodeName: {"node-a"}}}}, unauth: true},
		// A waypoint's ServiceAccount (shop/wp is a waypoint below) acts for itself only.
		{name: "waypoint", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: wpUser, Extra: map[string]authnv1.ExtraValue{ExtraNodeName: {"node-b"}}}},
			want: Caller{Node: "node-b", Namespace: "shop", ServiceAccount: "wp"}},
		{name: "waypoint pod lookup", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: wpUser, Extra: map[string]authnv1.ExtraValue{ExtraPodName: {"wp-7f9"}, ExtraPodUID: {"uid-2"}}}},
			want: Caller{Node: "node-b", Namespace: "shop", ServiceAccount: "wp"}},
		{name: "waypoint not bound to a pod", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: wpUser}}, unauth: true},
		{name: "waypoint name in another namespace", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
			Username: "system:serviceaccount:other:wp", Extra: map[string]authnv1.ExtraValue{ExtraNodeName: {"node-b"}}}}, unauth: true},
		{name: "not a service account", review: authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}}, unauth: true},
		{name: "forged or expired", review: authnv1.TokenReviewStatus{Authenticated: false, Error: "token expired"}, unauth: true},
		{name: "api server down", reviewEr: errors.New("connection refused")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(ztunnel, waypointPod)
			cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
				if tr.Spec.Token != "tok" || len(tr.Spec.Audiences) != 1 || tr.Spec.Audiences[0] != "ambit" {
					return true, nil, errors.New("unexpected review spec")
				}
				out := tr.DeepCopy()
				out.Status = tc.review
				return true, out, tc.reviewEr
			})
			k := &KubeAuthenticator{Client: cs, Audiences: []string{"ambit"},
				Waypoints: func(ns, name string) bool { return ns == "shop" && name == "wp" }}
			c, err := k.Authenticate(context.Background(), "tok")
			if tc.want.Node != "" {
				if err != nil || c != tc.want {
					t.Fatalf("Authenticate = %+v, %v; want %+v", c, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Authenticate = %+v, want an error", c)
			}
			if errors.Is(err, ErrUnauthenticated) != tc.unauth {
				t.Errorf("error %v: wraps ErrUnauthenticated = %v, want %v", err, !tc.unauth, tc.unauth)
			}
		})
	}
}
