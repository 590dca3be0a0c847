package caserver

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"ambit.dev/mesh/identity"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

var secretsGR = schema.GroupResource{Resource: "secrets"}

func caSecret(t *testing.T, cert, key []byte) *corev1.Secret {
	t.Helper()
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ambit-system", Name: "ambit-ca"},
		Data:       map[string][]byte{SecretCertKey: cert, SecretKeyKey: key},
	}
}

func creates(cs *fake.Clientset) int {
	n := 0
	for _, a := range cs.Actions() {
		if a.GetVerb() == "create" && a.GetResource().Resource == "secrets" {
			n++
		}
	}
	return n
}

// The Kubernetes API is a process edge: a fake clientset here; the end-to-end tests load the
// root from a real API server across a controller restart.
func TestSecretCA(t *testing.T) {
	ctx := t.Context()
	otherCert, otherKey, err := identity.NewRootPEM(identity.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("created when absent, then loaded", func(t *testing.T) {
		cs := fake.NewClientset()
		s := &SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca"}
		ca1, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sec, err := cs.CoreV1().Secrets("ambit-system").Get(ctx, "ambit-ca", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Immutable == nil || !*sec.Immutable {
			t.Error("created secret is not immutable")
		}
		if !bytes.Equal(sec.Data[SecretCertKey], ca1.RootPEM()) || len(sec.Data[SecretKeyKey]) == 0 {
			t.Error("secret does not hold the CA's root and key")
		}
		ca2, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ca1.RootPEM(), ca2.RootPEM()) {
			t.Error("second Load made a new root")
		}
		if n := creates(cs); n != 1 {
			t.Errorf("%d creates, want 1", n)
		}
	})

	t.Run("existing root is used", func(t *testing.T) {
		cs := fake.NewClientset(caSecret(t, otherCert, otherKey))
		ca, err := (&SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca"}).Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ca.RootPEM(), otherCert) {
			t.Error("Load did not use the stored root")
		}
		if n := creates(cs); n != 0 {
			t.Errorf("%d creates, want 0", n)
		}
	})

	t.Run("another replica creates it first", func(t *testing.T) {
		cs := fake.NewClientset()
		cs.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
			// The other replica's create lands between our get and our create.
			if err := cs.Tracker().Add(caSecret(t, otherCert, otherKey)); err != nil {
				t.Error(err)
			}
			return true, nil, apierrors.NewAlreadyExists(secretsGR, "ambit-ca")
		})
		ca, err := (&SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca"}).Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ca.RootPEM(), otherCert) {
			t.Error("after AlreadyExists, Load did not use the other replica's root")
		}
	})

	t.Run("transient error is retried", func(t *testing.T) {
		cs := fake.NewClientset(caSecret(t, otherCert, otherKey))
		fails := 1
		cs.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			if fails > 0 {
				fails--
				return true, nil, apierrors.NewServiceUnavailable("etcd is restarting")
			}
			return false, nil, nil
		})
		ca, err := (&SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca"}).Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ca.RootPEM(), otherCert) {
			t.Error("Load did not use the stored root")
		}
	})

	for _, tc := range []struct {
		name   string
		secret *corev1.Secret
		react  func(k8stesting.Action) (bool, runtime.Object, error)
		want   string
	}{
		{name: "key missing", secret: caSecret(t, otherCert, nil), want: "lacks"},
		{name: "mismatched pair", secret: caSecret(t, otherCert, []byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n")), want: "root-key.pem"},
		{name: "get forbidden", react: func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetVerb() != "get" {
				return false, nil, nil
			}
			return true, nil, apierrors.NewForbidden(secretsGR, "ambit-ca", errors.New("RBAC: no"))
		}, want: "forbidden"},
		{name: "create forbidden", react: func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetVerb() != "create" {
				return false, nil, nil
			}
			return true, nil, apierrors.NewForbidden(secretsGR, "ambit-ca", errors.New("RBAC: no"))
		}, want: "create: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			if tc.secret != nil {
				objs = append(objs, tc.secret)
			}
			cs := fake.NewClientset(objs...)
			if tc.react != nil {
				cs.PrependReactor("*", "secrets", tc.react)
			}
			_, err := (&SecretCA{Client: cs, Namespace: "ambit-system", Name: "ambit-ca"}).Load(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "ambit-system/ambit-ca") {
				t.Fatalf("Load error = %v, want one naming the secret and containing %q", err, tc.want)
			}
			// Permanent errors are not retried: one get, and never a replacement root.
			gets := 0
			for _, a := range cs.Actions() {
				if a.GetVerb() == "get" {
					gets++
				}
			}
			if gets != 1 {
				t.Errorf("%d gets, want 1 (no retry)", gets)
			}
			if tc.secret != nil {
				got, err := cs.Tracker().Get(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, "ambit-system", "ambit-ca")
				if err != nil || !bytes.Equal(got.(*corev1.Secret).Data[SecretCertKey], tc.secret.Data[SecretCertKey]) {
					t.Errorf("stored secret changed: %v", err)
				}
			}
		})
	}
}

func TestParseSecretRef(t *testing.T) {
	for _, tc := range []struct {
		ref, ns, name string
		ok            bool
	}{
		{"ambit-ca", "ambit-system", "ambit-ca", true},
		{"other/ca.root", "other", "ca.root", true},
		{"", "", "", false},
		{"ns/", "", "", false},
		{"/x", "", "", false},
		{"Bad/x", "", "", false},
		{"a/b/c", "", "", false},
	} {
		ns, name, err := ParseSecretRef(tc.ref, "ambit-system")
		if (err == nil) != tc.ok || ns != tc.ns || name != tc.name {
			t.Errorf("ParseSecretRef(%q) = %q, %q, %v", tc.ref, ns, name, err)
		}
	}
}
