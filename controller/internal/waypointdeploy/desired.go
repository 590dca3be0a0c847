package waypointdeploy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	kptr "k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"ambit.dev/controller/internal/model"
)

const (
	// FieldManager is the server-side apply field manager of the waypoints' objects and of
	// the Gateways' status.
	FieldManager = "ambit-controller"
	// LabelGatewayName and LabelGatewayClass mark every object made for a Gateway (the names
	// of Gateway API's GEP-1762); the reconciler watches only objects with LabelGatewayClass
	// ambit-waypoint.
	LabelGatewayName  = "gateway.networking.k8s.io/gateway-name"
	LabelGatewayClass = "gateway.networking.k8s.io/gateway-class-name"
	// AnnotationAppliedHash holds a hash of what was last applied to the object. An object
	// whose hash is the desired one is not applied again, so the reconciler writes only when
	// the template, its settings or the Gateway change.
	AnnotationAppliedHash = "ambit.dev/applied-hash"
)

// Settings are the controller's, the same for every waypoint.
type Settings struct {
	// Template renders each waypoint's objects. Required.
	Template *Template
	// Image of the waypoint. Required.
	Image string
	// Controller is the controller's gRPC address the waypoints dial. Required.
	Controller string
	// TrustDomain of the mesh. Required.
	TrustDomain string
	// RootCert is the mesh root, PEM. Required.
	RootCert []byte
}

func (s Settings) validate() error {
	switch {
	case s.Template == nil:
		return fmt.Errorf("waypoint settings: no template")
	case s.Image == "":
		return fmt.Errorf("waypoint settings: no image")
	case s.Controller == "":
		return fmt.Errorf("waypoint settings: no controller address")
	case s.TrustDomain == "":
		return fmt.Errorf("waypoint settings: no trust domain")
	case len(s.RootCert) == 0:
		return fmt.Errorf("waypoint settings: no root certificate")
	}
	return nil
}

// Desired returns the objects a Gateway of class ambit-waypoint asks for: the template
// rendered for it, in its namespace, labelled (with spec.infrastructure's labels and
// annotations too), controlled by it (an ownerReference, so the
// garbage collector deletes them with it) and each with the hash of its content. An invalid
// Gateway gets a *model.ObjectError naming the field; a template that fails for this Gateway
// an error naming the template, the object and the field.
func Desired(gw *gatewayv1.Gateway, s Settings) (Objects, error) {
	wp, _, err := model.ConvertGateway(gw, s.TrustDomain)
	if err != nil {
		return Objects{}, err
	}
	if errs := validation.IsDNS1035Label(gw.Name); len(errs) > 0 {
		return Objects{}, &model.ObjectError{Kind: "Gateway", Namespace: gw.Namespace, Name: gw.Name, Field: "metadata.name",
			Err: fmt.Errorf("%q cannot name the waypoint's Service: %s", gw.Name, strings.Join(errs, "; "))}
	}
	port := int32(wp.GetHbonePort())
	if port == 0 {
		port = 15008
	}
	objs, err := s.Template.Render(Params{
		Name: gw.Name, Namespace: gw.Namespace, Image: s.Image, Controller: s.Controller,
		TrustDomain: s.TrustDomain, RootCert: string(s.RootCert), HBONEPort: port,
	})
	if err != nil {
		return Objects{}, err
	}
	owner := metav1.OwnerReference{
		APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Name: gw.Name, UID: gw.UID,
		Controller: kptr.To(true),
	}
	// spec.infrastructure's labels and annotations go on every object (Gateway API asks
	// this of generated resources), under the template's and ours.
	var infraLabels, infraAnnotations map[string]string
	if in := gw.Spec.Infrastructure; in != nil {
		infraLabels, infraAnnotations = map[string]string{}, map[string]string{}
		for k, v := range in.Labels {
			infraLabels[string(k)] = string(v)
		}
		for k, v := range in.Annotations {
			infraAnnotations[string(k)] = string(v)
		}
	}
	for _, o := range objs.All() {
		o.SetNamespace(gw.Namespace)
		o.SetLabels(merged(infraLabels, o.GetLabels(), map[string]string{LabelGatewayName: gw.Name, LabelGatewayClass: model.WaypointClass}))
		o.SetOwnerReferences([]metav1.OwnerReference{owner})
		o.SetAnnotations(merged(infraAnnotations, o.GetAnnotations()))
		h, err := contentHash(o)
		if err != nil {
			return Objects{}, err
		}
		o.SetAnnotations(merged(o.GetAnnotations(), map[string]string{AnnotationAppliedHash: h}))
	}
	return objs, nil
}

// merged returns the union of maps, later ones winning; nil when all are empty.
func merged(maps ...map[string]string) map[string]string {
	var out map[string]string
	for _, m := range maps {
		for k, v := range m {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// contentHash hashes an object as it will be applied (encoding/json sorts map keys).
func contentHash(o *unstructured.Unstructured) (string, error) {
	b, err := json.Marshal(o.Object)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16]), nil
}

// controlledBy reports whether obj's controller is the Gateway named name (of any uid: a
// Gateway deleted and created again takes over its predecessor's objects).
func controlledBy(obj metav1.Object, name string) bool {
	ref := metav1.GetControllerOfNoCopy(obj)
	if ref == nil || ref.Kind != "Gateway" || ref.Name != name {
		return false
	}
	group, _, _ := strings.Cut(ref.APIVersion, "/")
	return group == gatewayv1.GroupName
}
