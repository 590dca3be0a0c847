package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"ambit.dev/controller/internal/source"
)

// Apply puts the Kubernetes objects of file into the controller's folder of the lab in dir
// (as applied-<file name>), after checking them as the controller will: a file the
// controller would refuse is refused here and changes nothing. Applying the same file again
// replaces its objects.
func Apply(dir, file string) ([]string, error) {
	st, err := LoadState(orDefault(dir))
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	objs, err := source.ParseFile(file, b)
	if err != nil {
		return nil, err
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("%s: no objects", file)
	}
	var names []string
	for _, o := range objs {
		names = append(names, describe(o))
	}
	if err := writeAtomic(filepath.Join(st.ConfigDir, appliedName(file)), b); err != nil {
		return nil, err
	}
	return names, nil
}

// Delete takes the objects of a file applied with Apply out of the lab's controller folder.
func Delete(dir, file string) error {
	st, err := LoadState(orDefault(dir))
	if err != nil {
		return err
	}
	err = os.Remove(filepath.Join(st.ConfigDir, appliedName(file)))
	if os.IsNotExist(err) {
		return fmt.Errorf("%s was not applied to lab %s", file, st.Name)
	}
	return err
}

func appliedName(file string) string {
	base := filepath.Base(file)
	if !isConfigFile(base) {
		base += ".yaml"
	}
	return appliedPrefix + strings.TrimPrefix(base, ".")
}

func orDefault(dir string) string {
	if dir == "" {
		return DefaultStateDir
	}
	return dir
}
