package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"ambit.dev/node/internal/cniplugin"
)

// KubeconfigName is the file the agent writes into the CNI config dir for the plugin. Its
// extension keeps the runtime from taking it for a network config.
const KubeconfigName = "ambit-cni.kubeconfig"

// primaryConflist is the network config the runtime uses: the first .conflist (or .conf, or
// .json) of dir in lexical order, as containerd and CRI-O pick it.
func primaryConflist(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conflist", ".conf", ".json":
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no CNI network config in %s yet", dir)
	}
	sort.Strings(names)
	return filepath.Join(dir, names[0]), nil
}

// chain rewrites a network config so that its last plugin is entry, once: an older ambit
// entry is replaced, a single-plugin .conf becomes a list. It returns the new bytes and
// whether they differ.
func chain(conf []byte, entry map[string]any) ([]byte, bool, error) {
	list, err := asList(conf)
	if err != nil {
		return nil, false, err
	}
	plugins := withoutAmbit(list["plugins"].([]any))
	list["plugins"] = append(plugins, entry)
	return render(conf, list)
}

// unchain removes ambit's entry from a network config.
func unchain(conf []byte) ([]byte, bool, error) {
	list, err := asList(conf)
	if err != nil {
		return nil, false, err
	}
	list["plugins"] = withoutAmbit(list["plugins"].([]any))
	return render(conf, list)
}

func asList(conf []byte) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	if _, ok := m["plugins"].([]any); ok {
		return m, nil
	}
	if _, ok := m["type"]; !ok {
		return nil, errors.New("network config: neither plugins nor type")
	}
	// A single-plugin .conf: its own fields become the list's one plugin.
	plugin := map[string]any{}
	list := map[string]any{"plugins": []any{plugin}}
	for k, v := range m {
		switch k {
		case "cniVersion", "name":
			list[k] = v
		default:
			plugin[k] = v
		}
	}
	return list, nil
}

func withoutAmbit(plugins []any) []any {
	return slices.DeleteFunc(slices.Clone(plugins), func(p any) bool {
		m, ok := p.(map[string]any)
		return ok && m["type"] == cniplugin.Type
	})
}

func render(old []byte, list map[string]any) ([]byte, bool, error) {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, false, err
	}
	b = append(b, '\n')
	var before any
	_ = json.Unmarshal(old, &before)
	oldCanon, _ := json.Marshal(before)
	newCanon, _ := json.Marshal(list)
	return b, !bytes.Equal(oldCanon, newCanon), nil
}

// writeAtomic replaces path with data through a rename, so that the runtime never reads half
// a file.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// copyBinary installs the plugin binary src as dir/ambit-cni when its content differs.
func copyBinary(src, dir string) error {
	dst := filepath.Join(dir, cniplugin.Type)
	in, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, in) {
		return nil
	}
	return writeAtomic(dst, in, 0o755)
}

// fileEqual reports whether path holds data.
func fileEqual(path string, data []byte) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	cur, err := io.ReadAll(f)
	return err == nil && bytes.Equal(cur, data)
}
