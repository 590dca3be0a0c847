package waypointdeploy

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/template"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// DefaultTemplate is deploy/waypoint/waypoint.yaml, byte for byte: `make generate` copies it
// here (the module cannot embed a file outside its directory) and TestDefaultTemplateIsDeploys
// and `make generate-check` fail when the two differ.
//
//go:embed waypoint.yaml
var DefaultTemplate []byte

// DefaultTemplateName names DefaultTemplate in errors.
const DefaultTemplateName = "deploy/waypoint/waypoint.yaml (built in)"

// Params are what a template is rendered with: one Gateway's, and the controller's settings.
type Params struct {
	// Name and Namespace of the Gateway.
	Name, Namespace string
	// Image of the waypoint.
	Image string
	// Controller is the controller's gRPC address, host:port.
	Controller string
	// TrustDomain of the mesh.
	TrustDomain string
	// RootCert is the mesh root certificate, PEM.
	RootCert string
	// HBONEPort is the port of the Gateway's "mesh" listener, the Service's HBONE port.
	HBONEPort int32
}

// The kinds a template may render, and the resources the reconciler manages them through.
var (
	ServiceAccountGVR = corev1.SchemeGroupVersion.WithResource("serviceaccounts")
	DeploymentGVR     = appsv1.SchemeGroupVersion.WithResource("deployments")
	ServiceGVR        = corev1.SchemeGroupVersion.WithResource("services")
)

var kinds = map[schema.GroupVersionKind]struct {
	gvr schema.GroupVersionResource
	new func() runtime.Object // typed, for strict decoding
}{
	corev1.SchemeGroupVersion.WithKind("ServiceAccount"): {ServiceAccountGVR, func() runtime.Object { return &corev1.ServiceAccount{} }},
	appsv1.SchemeGroupVersion.WithKind("Deployment"):     {DeploymentGVR, func() runtime.Object { return &appsv1.Deployment{} }},
	corev1.SchemeGroupVersion.WithKind("Service"):        {ServiceGVR, func() runtime.Object { return &corev1.Service{} }},
}

// Objects are a rendered template: the waypoint's ServiceAccount, Deployment and Service.
type Objects struct {
	ServiceAccount, Deployment, Service *unstructured.Unstructured
}

// All returns the objects in the order they are applied: the ServiceAccount before the
// Deployment whose pods run as it.
func (o Objects) All() []*unstructured.Unstructured {
	return []*unstructured.Unstructured{o.ServiceAccount, o.Deployment, o.Service}
}

// GVR returns the resource of an object of a kind a template may render.
func GVR(obj *unstructured.Unstructured) schema.GroupVersionResource {
	return kinds[obj.GroupVersionKind()].gvr
}

// Template is a parsed waypoint template.
type Template struct {
	name string
	tmpl *template.Template
}

// sampleParams render a template once at parse time, so that a bad one fails the controller's
// start rather than its first Gateway.
var sampleParams = Params{
	Name: "example", Namespace: "default", Image: "ambit/waypoint:dev",
	Controller: "ambit-controller.ambit-system.svc:15012", TrustDomain: "cluster.local",
	RootCert:  "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
	HBONEPort: 15008,
}

// Parse parses a template (name is its file, for errors) and checks what it renders for a
// sample Gateway.
func Parse(name string, text []byte) (*Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(template.FuncMap{"quote": quote}).Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("waypoint template: %w", err)
	}
	tt := &Template{name: name, tmpl: t}
	if _, err := tt.Render(sampleParams); err != nil {
		return nil, err
	}
	return tt, nil
}

// quote makes s a YAML double-quoted scalar (a JSON string is one), so a parameter can never
// change the structure of the document.
func quote(s string) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return "", err
	}
	return string(bytes.TrimSuffix(b.Bytes(), []byte("\n"))), nil
}

// Render renders the template for p and checks the result: one ServiceAccount named p.Name,
// one Deployment whose pods run as that ServiceAccount, one Service, nothing else, no
// namespace but p.Namespace, no field the API does not know. Errors name the template, the
// object and the field.
func (t *Template) Render(p Params) (Objects, error) {
	var buf bytes.Buffer
	if err := t.tmpl.Execute(&buf, p); err != nil {
		return Objects{}, fmt.Errorf("waypoint template: %w", err)
	}
	var out Objects
	r := utilyaml.NewYAMLReader(bufio.NewReader(&buf))
	for doc := 1; ; doc++ {
		data, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Objects{}, fmt.Errorf("waypoint template %s: document %d: %w", t.name, doc, err)
		}
		obj := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(data, &obj.Object); err != nil {
			return Objects{}, fmt.Errorf("waypoint template %s: document %d: %w", t.name, doc, err)
		}
		if len(obj.Object) == 0 {
			continue // only comments
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("waypoint template %s: document %d (%s %q): %s", t.name, doc, obj.GetKind(), obj.GetName(), fmt.Sprintf(format, args...))
		}
		k, ok := kinds[obj.GroupVersionKind()]
		if !ok {
			return Objects{}, bad("apiVersion/kind %s is not v1 ServiceAccount, apps/v1 Deployment or v1 Service", obj.GroupVersionKind())
		}
		if ns := obj.GetNamespace(); ns != "" && ns != p.Namespace {
			return Objects{}, bad("metadata.namespace %q: the objects must be in the Gateway's namespace %q", ns, p.Namespace)
		}
		if obj.GetName() == "" {
			return Objects{}, bad("metadata.name is empty")
		}
		typed := k.new()
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(obj.Object, typed, true); err != nil {
			return Objects{}, bad("%v", err)
		}
		var slot **unstructured.Unstructured
		switch o := typed.(type) {
		case *corev1.ServiceAccount:
			if o.Name != p.Name {
				return Objects{}, bad("metadata.name must be the Gateway's name %q: the waypoint's identity is its ServiceAccount", p.Name)
			}
			slot = &out.ServiceAccount
		case *appsv1.Deployment:
			if sa := o.Spec.Template.Spec.ServiceAccountName; sa != p.Name {
				return Objects{}, bad("spec.template.spec.serviceAccountName is %q, want the Gateway's name %q (the waypoint's identity)", sa, p.Name)
			}
			slot = &out.Deployment
		case *corev1.Service:
			slot = &out.Service
		}
		if *slot != nil {
			return Objects{}, bad("a second %s: the template renders one of each kind", obj.GetKind())
		}
		*slot = obj
	}
	for kind, o := range map[string]*unstructured.Unstructured{"ServiceAccount": out.ServiceAccount, "Deployment": out.Deployment, "Service": out.Service} {
		if o == nil {
			return Objects{}, fmt.Errorf("waypoint template %s: renders no %s", t.name, kind)
		}
	}
	return out, nil
}
