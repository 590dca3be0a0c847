package lab

import (
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
)

// describe names an object the way kubectl prints it: kind namespace/name.
func describe(o runtime.Object) string {
	kind := o.GetObjectKind().GroupVersionKind().Kind
	m, err := meta.Accessor(o)
	if err != nil {
		return kind
	}
	if m.GetNamespace() == "" {
		return kind + " " + m.GetName()
	}
	return kind + " " + m.GetNamespace() + "/" + m.GetName()
}
