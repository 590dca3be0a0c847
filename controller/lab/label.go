package lab

import (
	"fmt"

	"ambit.dev/controller/internal/configdir"
)

// SetNamespaceLabel sets label key to value on Namespace ns in the config folder of the lab
// at dir (empty: the default), or removes it when value is nil, as `ambitctl namespace
// enable` does for the enrolment label; the controller picks the change up like any edit.
// The benchmark uses it for ambit.dev/tunnel-protocol.
func SetNamespaceLabel(dir, ns, key string, value *string) error {
	st, err := LoadState(orDefault(dir))
	if err != nil {
		return err
	}
	if value == nil {
		_, err = configdir.RemoveNamespaceLabel(st.ConfigDir, ns, key)
	} else {
		_, err = configdir.SetNamespaceLabel(st.ConfigDir, ns, key, *value)
	}
	if err != nil {
		return fmt.Errorf("namespace %s label %s: %w", ns, key, err)
	}
	return nil
}
