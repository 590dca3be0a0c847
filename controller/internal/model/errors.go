package model

import "fmt"

// ObjectError says which field of which object is invalid.
type ObjectError struct {
	Kind      string
	Namespace string
	Name      string
	// Field is the JSON path of the bad field, e.g. spec.rules[0].to[1].operation.ports[2].
	Field string
	Err   error
	// Partial says the object is applied but for this field (an Istio AuthorizationPolicy's
	// rule that fails closed), rather than refused.
	Partial bool
	// Unresolved says the field is a reference to something that does not exist (a
	// VirtualService's subset that no DestinationRule defines): what ResolvedRefs reports.
	Unresolved bool
}

func (e *ObjectError) Error() string {
	return fmt.Sprintf("%s %s/%s: %s: %v", e.Kind, e.Namespace, e.Name, e.Field, e.Err)
}

func (e *ObjectError) Unwrap() error { return e.Err }

func objErr(kind, ns, name, field string, format string, args ...any) *ObjectError {
	return &ObjectError{Kind: kind, Namespace: ns, Name: name, Field: field, Err: fmt.Errorf(format, args...)}
}
