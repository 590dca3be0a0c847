package routestatus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"ambit.dev/mesh/wait"
)

// TestWriterGRPCRoutesWhenServed: the Writer writes GRPCRoutes' status only when the API
// server serves GRPCRoutes (a cluster may have Gateway API's HTTPRoute CRD alone, where a
// GRPCRoute informer would never sync and no status would be written at all); HTTPRoutes'
// either way.
func TestWriterGRPCRoutesWhenServed(t *testing.T) {
	for _, served := range []bool{true, false} {
		t.Run(fmt.Sprintf("grpcroutes served %v", served), func(t *testing.T) {
			kube := kubefake.NewClientset(
				&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web"}},
				&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web-v1"}},
			)
			resources := []metav1.APIResource{{Name: "httproutes", Kind: "HTTPRoute"}}
			if served {
				resources = append(resources, metav1.APIResource{Name: "grpcroutes", Kind: "GRPCRoute"})
			}
			kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{
				{GroupVersion: gatewayv1.GroupVersion.String(), APIResources: resources}}
			gw := gatewayfake.NewSimpleClientset() //nolint:staticcheck // NewClientset has no Gateway v1 type mapping in v1.6.3
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if _, err := gw.GatewayV1().HTTPRoutes("demo").Create(ctx, route("web-v1"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := gw.GatewayV1().GRPCRoutes("demo").Create(ctx, grpcRoute("web-v1"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			w := &Writer{Kube: kube, Gateway: gw, Domain: "cluster.local", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			wctx, wcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- w.Run(wctx) }()
			defer func() {
				wcancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			wait.Until(t, 10*time.Second, "the HTTPRoute's status", func() error {
				r, err := gw.GatewayV1().HTTPRoutes("demo").Get(ctx, "split", metav1.GetOptions{})
				if err != nil || len(r.Status.Parents) != 1 {
					return fmt.Errorf("status %+v, %v", r.Status.Parents, err)
				}
				return nil
			})
			grpcStatus := func() []gatewayv1.RouteParentStatus {
				r, err := gw.GatewayV1().GRPCRoutes("demo").Get(ctx, "echo", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				return r.Status.Parents
			}
			// The HTTPRoute's status is written after every informer synced: whether one
			// listed GRPCRoutes is settled.
			listed := false
			for _, a := range gw.Actions() {
				listed = listed || (a.GetVerb() == "list" && a.GetResource().Resource == "grpcroutes")
			}
			if listed != served {
				t.Fatalf("GRPCRoutes listed: %v, want %v", listed, served)
			}
			if !served {
				if p := grpcStatus(); len(p) != 0 {
					t.Fatalf("GRPCRoutes not served, yet the GRPCRoute's status was written: %+v", p)
				}
				return
			}
			wait.Until(t, 10*time.Second, "the GRPCRoute's status", func() error {
				if p := grpcStatus(); len(p) != 1 || len(p[0].Conditions) != 2 || p[0].Conditions[0].Status != metav1.ConditionTrue {
					return fmt.Errorf("status %+v", p)
				}
				return nil
			})
		})
	}
}
