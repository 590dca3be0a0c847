package cli

import (
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/identity"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// While the root rotates the ConfigMap ztunnel mounts as --root-cert must carry every root of
// the CA Secret: `ambitctl check` accepts the bundle and flags a ConfigMap with the old root
// only.
func TestCheckRootBundleDuringRotation(t *testing.T) {
	oldCert, oldKey, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newCert, _, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: caSecretName},
		Data: map[string][]byte{"root-cert.pem": oldCert, "root-key.pem": oldKey, "extra-roots.pem": newCert}}
	bundle, err := secretBundle(sec)
	if err != nil {
		t.Fatal(err)
	}
	if want := string(oldCert) + string(newCert); string(bundle) != want {
		t.Fatalf("secret bundle is not root-cert.pem then extra-roots.pem")
	}
	for _, tc := range []struct {
		name string
		cm   []byte
		want string
	}{
		{"both roots published", bundle, ""},
		{"old root only", oldCert, "differs from the roots of secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: rootCertCM},
				Data: map[string]string{"root-cert.pem": string(tc.cm)}}
			res := certChecks(t.Context(), &cluster{kube: fake.NewClientset(sec, cm)}, time.Now())
			var got error
			found := false
			for _, r := range res {
				if r.name == "ztunnel's root is the controller's" {
					got, found = r.err, true
				}
			}
			switch {
			case !found:
				t.Fatalf("no root comparison among %d checks", len(res))
			case tc.want == "" && got != nil:
				t.Fatalf("check failed: %v", got)
			case tc.want != "" && (got == nil || !strings.Contains(got.Error(), tc.want)):
				t.Fatalf("check = %v, want %q", got, tc.want)
			}
		})
	}
}
