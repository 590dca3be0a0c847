package caserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Extra keys of a TokenReview's user info for a pod-bound ServiceAccount token.
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
)

// DefaultProxyServiceAccounts may authenticate as a node by default: ztunnel's.
var DefaultProxyServiceAccounts = []string{"ambit-system/ztunnel"}

// KubeAuthenticator authenticates a proxy's ServiceAccount token with a TokenReview and
// derives its node from the pod the token is bound to: the node-name extra when the API
// server sets it (Kubernetes 1.30+), otherwise the pod named by the pod-name extra, looked up
// and checked against the pod-uid extra so a token of a deleted pod that reused the name
// does not count.
//
// Two kinds of ServiceAccount are accepted. A node proxy's (ServiceAccounts) acts for its
// node: it may hold the identity of any pod there. A waypoint's (Waypoints) acts only for
// itself: the Caller is restricted to that ServiceAccount's identity. Any other token is
// refused, so a workload's own token gets nothing from the controller.
type KubeAuthenticator struct {
	// Client is used for TokenReviews and, when Pods is nil, pod lookups. Required.
	Client kubernetes.Interface
	// Audiences the token must be issued for; empty means the API server's own.
	Audiences []string
	// ServiceAccounts ("namespace/name") whose tokens may act for their pod's node. Default
	// DefaultProxyServiceAccounts. Any other ServiceAccount is refused: a workload's own token
	// must not get its node's identities.
	ServiceAccounts []string
	// Waypoints reports whether namespace/name is a waypoint's ServiceAccount (there is an
	// ambit-waypoint Gateway of that name in that namespace). Nil accepts no waypoint.
	Waypoints func(namespace, name string) bool
	// Pods looks up a pod; nil uses Client (an informer's lister fits here).
	Pods func(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// Authenticate implements Authenticator.
func (k *KubeAuthenticator) Authenticate(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, fmt.Errorf("%w: empty token", ErrUnauthenticated)
	}
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: k.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Caller{}, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "token not authenticated"
		}
		return Caller{}, fmt.Errorf("%w: token review: %s", ErrUnauthenticated, msg)
	}
	ns, sa, ok := parseServiceAccount(st.User.Username)
	if !ok {
		return Caller{}, fmt.Errorf("%w: %q is not a service account", ErrUnauthenticated, st.User.Username)
	}
	allowed := k.ServiceAccounts
	if len(allowed) == 0 {
		allowed = DefaultProxyServiceAccounts
	}
	var c Caller
	switch {
	case slices.Contains(allowed, ns+"/"+sa):
	case k.Waypoints != nil && k.Waypoints(ns, sa):
		c.Namespace, c.ServiceAccount = ns, sa
	default:
		return Caller{}, fmt.Errorf("%w: service account %s/%s is neither a node proxy's nor a waypoint's", ErrUnauthenticated, ns, sa)
	}
	if c.Node, err = k.node(ctx, ns, sa, st.User.Extra); err != nil {
		return Caller{}, err
	}
	return c, nil
}

// node is the node of the pod a token of ns/sa is bound to.
func (k *KubeAuthenticator) node(ctx context.Context, ns, sa string, extras map[string]authnv1.ExtraValue) (string, error) {
	extra := func(key string) string {
		if v := extras[key]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	if node := extra(ExtraNodeName); node != "" {
		return node, nil
	}
	podName := extra(ExtraPodName)
	if podName == "" {
		return "", fmt.Errorf("%w: token of %s/%s is not bound to a pod", ErrUnauthenticated, ns, sa)
	}
	get := k.Pods
	if get == nil {
		get = func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
			return k.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		}
	}
	pod, err := get(ctx, ns, podName)
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("%w: token pod %s/%s does not exist", ErrUnauthenticated, ns, podName)
	}
	if err != nil {
		return "", fmt.Errorf("token pod %s/%s: %w", ns, podName, err)
	}
	if uid := extra(ExtraPodUID); uid != "" && string(pod.UID) != uid {
		return "", fmt.Errorf("%w: token is bound to pod uid %s, %s/%s is now %s", ErrUnauthenticated, uid, ns, podName, pod.UID)
	}
	if pod.Spec.ServiceAccountName != sa {
		return "", fmt.Errorf("%w: pod %s/%s runs as %s, token is for %s", ErrUnauthenticated, ns, podName, pod.Spec.ServiceAccountName, sa)
	}
	if pod.Spec.NodeName == "" {
		return "", errors.New("token pod " + ns + "/" + podName + " is not scheduled yet")
	}
	return pod.Spec.NodeName, nil
}

// parseServiceAccount splits "system:serviceaccount:<ns>:<name>".
func parseServiceAccount(user string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != "" && !strings.Contains(name, ":")
}
