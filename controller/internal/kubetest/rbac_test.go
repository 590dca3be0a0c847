package kubetest

import (
	"fmt"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestControllerRBAC applies deploy/ (namespace, RBAC, Deployment) and checks the controller's
// ServiceAccount gets what the controller needs and nothing more.
func TestControllerRBAC(t *testing.T) {
	c := Start(t)
	ctx := testContext(t)
	if err := c.Apply(ctx, "deploy/namespace.yaml", "deploy/rbac", "deploy/controller"); err != nil {
		t.Fatal(err)
	}

	const (
		ns   = "ambit-system"
		sa   = "ambit-controller"
		user = "system:serviceaccount:" + ns + ":" + sa
	)
	type check struct {
		verb, group, resource, namespace string
		allowed                          bool
		name                             string // resource name, for rules with resourceNames
	}
	var checks []check
	allow := func(verb, group, resource, namespace string) {
		checks = append(checks, check{verb, group, resource, namespace, true, ""})
	}
	deny := func(verb, group, resource, namespace string) {
		checks = append(checks, check{verb, group, resource, namespace, false, ""})
	}
	for _, r := range []struct {
		group, resource string
		waypoint        bool // a kind of the waypoints' objects, which the controller writes
	}{
		{"", "namespaces", false}, {"", "pods", false}, {"", "services", true}, {"", "serviceaccounts", true},
		{"apps", "deployments", true},
		{"gateway.networking.k8s.io", "gateways", false}, {"gateway.networking.k8s.io", "httproutes", false},
		{"gateway.networking.k8s.io", "grpcroutes", false},
		{"security.ambit.dev", "authorizationpolicies", false}, {"security.ambit.dev", "peerauthentications", false},
		{"networking.istio.io", "virtualservices", false}, {"networking.istio.io", "destinationrules", false},
		{"security.istio.io", "authorizationpolicies", false}, {"security.istio.io", "peerauthentications", false},
	} {
		for _, verb := range []string{"get", "list", "watch"} {
			allow(verb, r.group, r.resource, "")     // cluster-wide
			allow(verb, r.group, r.resource, "apps") // and so in any namespace
		}
		// The waypoints' objects: server-side apply (create, patch) and delete, in the
		// Gateways' namespaces; never update or deletecollection.
		for _, verb := range []string{"create", "patch", "delete"} {
			checks = append(checks, check{verb, r.group, r.resource, "apps", r.waypoint, ""})
		}
		for _, verb := range []string{"update", "deletecollection"} {
			deny(verb, r.group, r.resource, "apps")
		}
	}
	// A Gateway's status, not its spec.
	allow("patch", "gateway.networking.k8s.io", "gateways/status", "apps")
	deny("update", "gateway.networking.k8s.io", "gateways/status", "apps")
	// An HTTPRoute's and a GRPCRoute's status, written whole (status.parents is an atomic
	// list), not their spec.
	for _, res := range []string{"httproutes/status", "grpcroutes/status"} {
		allow("update", "gateway.networking.k8s.io", res, "apps")
		deny("patch", "gateway.networking.k8s.io", res, "apps")
	}
	// The status of Istio's kinds and ambit's policies, written whole, not their spec (the
	// update on the object itself is denied above).
	for _, r := range []struct{ group, resource string }{
		{"networking.istio.io", "virtualservices/status"}, {"networking.istio.io", "destinationrules/status"},
		{"security.istio.io", "authorizationpolicies/status"}, {"security.istio.io", "peerauthentications/status"},
		{"security.ambit.dev", "authorizationpolicies/status"}, {"security.ambit.dev", "peerauthentications/status"},
	} {
		allow("update", r.group, r.resource, "apps")
		deny("patch", r.group, r.resource, "apps")
		deny("create", r.group, r.resource, "apps")
	}
	// Nor the status of kinds it has no verdict on.
	deny("update", "networking.istio.io", "gateways/status", "apps")
	deny("update", "networking.istio.io", "serviceentries/status", "apps")
	deny("update", "security.istio.io", "requestauthentications/status", "apps")
	// No other workload kind, nor the waypoints' pods directly.
	deny("create", "", "pods", "apps")
	deny("patch", "apps", "daemonsets", "apps")
	deny("create", "apps", "statefulsets", "apps")
	deny("patch", "apps", "deployments/scale", "apps")
	deny("create", "", "configmaps", "apps")
	deny("patch", "", "configmaps", "apps")
	allow("create", "authentication.k8s.io", "tokenreviews", "")
	deny("create", "authorization.k8s.io", "subjectaccessreviews", "")
	deny("create", "", "serviceaccounts/token", "apps") // cannot mint other identities' tokens
	deny("patch", "", "namespaces", "")                 // enrolling namespaces is ambitctl's job
	deny("update", "", "pods/status", "apps")
	deny("list", "", "nodes", "")
	deny("list", "", "configmaps", "apps")
	deny("create", "", "pods/exec", "apps")
	deny("escalate", "rbac.authorization.k8s.io", "clusterroles", "")
	deny("bind", "rbac.authorization.k8s.io", "clusterroles", "")

	// Its own namespace: the leader-election Lease and the root CA Secret (ambit-ca): get
	// that Secret only, create (which RBAC cannot restrict by name), nothing else.
	for _, verb := range []string{"get", "create", "update"} {
		allow(verb, "coordination.k8s.io", "leases", ns)
	}
	checks = append(checks,
		check{"get", "", "secrets", ns, true, "ambit-ca"},
		check{"get", "", "secrets", ns, false, "other"},
		check{"get", "", "secrets", ns, false, ""},
		check{"create", "", "secrets", ns, true, ""},
		check{"update", "", "secrets", ns, false, "ambit-ca"},
		check{"patch", "", "secrets", ns, false, "ambit-ca"},
		check{"delete", "", "secrets", ns, false, "ambit-ca"},
		check{"watch", "", "secrets", ns, false, "ambit-ca"},
	)
	deny("delete", "", "secrets", ns)
	deny("list", "", "secrets", ns)
	// Nobody else's secrets or leases.
	for _, verb := range []string{"get", "list", "watch", "create", "update"} {
		deny(verb, "", "secrets", "default")
		deny(verb, "", "secrets", "")
		deny(verb, "coordination.k8s.io", "leases", "kube-system")
	}

	for _, ch := range checks {
		where := "cluster-wide"
		if ch.namespace != "" {
			where = "in " + ch.namespace
		}
		kind := ch.resource
		if ch.group != "" {
			kind += "." + ch.group
		}
		if ch.name != "" {
			kind += " " + ch.name
		}
		name := fmt.Sprintf("%s %s %s", ch.verb, kind, where)
		resource, subresource := ch.resource, ""
		for i := range resource {
			if resource[i] == '/' {
				resource, subresource = ch.resource[:i], ch.resource[i+1:]
				break
			}
		}
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: ch.verb, Group: ch.group, Resource: resource, Subresource: subresource, Namespace: ch.namespace, Name: ch.name,
			},
		}}
		got, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("%s: SubjectAccessReview: %v", name, err)
		}
		if got.Status.Allowed != ch.allowed {
			t.Errorf("%s: allowed = %v, want %v (%s)", name, got.Status.Allowed, ch.allowed, got.Status.Reason)
		}
	}

	// The same, with the ServiceAccount's own token over the wire.
	client, err := kubernetes.NewForConfig(c.ClientAs(ns, sa))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("controller listing pods: %v", err)
	}
	if _, err := client.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("controller listing secrets of default: got %v, want Forbidden", err)
	}
	if err := client.CoreV1().Pods("default").Delete(ctx, "anything", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("controller deleting a pod: got %v, want Forbidden", err)
	}

	// The Deployment passed the API server's validation; check what the controller relies on.
	d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "ambit-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("Deployment replicas = %v, want 2", d.Spec.Replicas)
	}
	if d.Spec.Template.Spec.ServiceAccountName != sa {
		t.Errorf("Deployment runs as ServiceAccount %q, want %q", d.Spec.Template.Spec.ServiceAccountName, sa)
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	ports := map[int32]bool{}
	for _, p := range ctr.Ports {
		ports[p.ContainerPort] = true
	}
	if !ports[15012] || !ports[15014] {
		t.Errorf("Deployment container ports %v, want 15012 and 15014", ctr.Ports)
	}
	if ctr.LivenessProbe == nil || ctr.LivenessProbe.HTTPGet == nil || ctr.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe %+v, want GET /healthz", ctr.LivenessProbe)
	}
	if ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil || ctr.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe %+v, want GET /readyz", ctr.ReadinessProbe)
	}
	leader := false
	for _, a := range ctr.Args {
		if a == "--leader-elect" || a == "--leader-elect=true" {
			leader = true
		}
	}
	if !leader {
		t.Errorf("controller args %v lack --leader-elect", ctr.Args)
	}
}
