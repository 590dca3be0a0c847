package waypointdeploy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The built-in template is deploy/waypoint/waypoint.yaml, byte for byte (make generate
// copies it).
func TestDefaultTemplateIsDeploys(t *testing.T) {
	deploy, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "waypoint", "waypoint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(deploy, DefaultTemplate) {
		t.Fatal("controller/internal/waypointdeploy/waypoint.yaml differs from deploy/waypoint/waypoint.yaml: run `make generate`")
	}
}

func defaultTemplate(t *testing.T) *Template {
	t.Helper()
	tmpl, err := Parse(DefaultTemplateName, DefaultTemplate)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

// What the default template renders runs the waypoint as the Gateway's ServiceAccount with
// the flags the waypoint needs, and parameters cannot break out of their YAML strings.
func TestDefaultTemplateRenders(t *testing.T) {
	p := sampleParams
	p.Name, p.Namespace = "wp", "shop"
	p.Controller = `evil: "x"\n- --admin-addr=:1` // stays one argument
	objs, err := defaultTemplate(t).Render(p)
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs.Deployment.Object, &d); err != nil {
		t.Fatal(err)
	}
	pod := d.Spec.Template
	if pod.Spec.ServiceAccountName != "wp" || pod.Labels["ambit.dev/dataplane-mode"] != "none" ||
		pod.Annotations["ambit.dev/root-cert"] != p.RootCert {
		t.Errorf("pod template: sa %q, labels %v, root annotation %q", pod.Spec.ServiceAccountName, pod.Labels, pod.Annotations["ambit.dev/root-cert"])
	}
	c := pod.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--name=wp", "--namespace=shop", "--controller=" + p.Controller, "--token-file=", "--root-cert=",
		"--hbone-addr=:15008", "--ready-addr=:15021", "--metrics-addr=:15020", "--admin-addr=127.0.0.1:15000", "--drain-period="} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", c.Args, want)
		}
	}
	if len(c.Args) != 11 {
		t.Errorf("%d args, want 11: %q", len(c.Args), c.Args)
	}
	if c.Image != p.Image || d.Spec.Replicas != nil {
		t.Errorf("image %q, replicas %v; want %q and none (kubectl scale owns them)", c.Image, d.Spec.Replicas, p.Image)
	}
	if objs.ServiceAccount.GetName() != "wp" || objs.Service.GetName() != "wp" {
		t.Errorf("ServiceAccount %q, Service %q", objs.ServiceAccount.GetName(), objs.Service.GetName())
	}
}

// A bad template fails at Parse with an error that names the template, the object and the
// field.
func TestBadTemplates(t *testing.T) {
	good := string(DefaultTemplate)
	tests := []struct {
		name, text, want string
	}{
		{"syntax", good + "{{ .Name ", "unclosed action"},
		{"unknown parameter", strings.Replace(good, "{{ quote .Image }}", "{{ quote .Imag }}", 1), "can't evaluate field Imag"},
		{"unknown field", strings.Replace(good, "  strategy:\n", "  strategie: {}\n  strategy:\n", 1), `document 2 (Deployment "example"): strict decoding error: unknown field "spec.strategie"`},
		{"other identity", strings.Replace(good, "      serviceAccountName: {{ quote .Name }}", `      serviceAccountName: "default"`, 1),
			`spec.template.spec.serviceAccountName is "default", want the Gateway's name "example"`},
		{"other namespace", strings.Replace(good, "kind: Service\nmetadata:\n", "kind: Service\nmetadata:\n  namespace: kube-system\n", 1),
			`(Service "example"): metadata.namespace "kube-system"`},
		{"other kind", good + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n", "v1, Kind=ConfigMap is not"},
		{"two services", good + "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: x\n", "a second Service"},
		{"no service account", good[strings.Index(good, "---"):], "renders no ServiceAccount"},
		{"not yaml", good + "---\n: : :\n", "document 4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tc.text))
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "waypoint template") {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}
