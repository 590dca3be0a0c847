// Package configdir edits the folder of Kubernetes YAML that the controller reads in local
// mode (controller --config-dir, internal/source.Folder): the labels of a Namespace, a
// ServiceAccount or a Service, which is how `ambitctl namespace enable|disable` enrols a
// namespace and `ambitctl waypoint apply --enroll` binds a waypoint without a cluster.
//
// Edits are surgical: only the YAML document that holds the Namespace is re-encoded; every
// other document of the file, its comments and separators stay byte for byte. Every file is
// parsed before anything is written, so a folder with a broken file gets one error naming the
// file and document, and nothing changes. Files are replaced atomically (a hidden temporary
// file in the same directory, then rename), because the controller polls the folder and must
// never read half a file.
package configdir

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Result says what an edit did.
type Result struct {
	// Files are the files that hold the Namespace (after the edit), sorted.
	Files []string
	// Changed reports that some file was written.
	Changed bool
	// Created reports that a new file was written because no Namespace document existed.
	Created bool
}

// Object names an object of the folder: a Namespace (Namespace empty), a ServiceAccount or a
// Service (core v1, whose labels can be edited), or a Gateway (whose status can be).
type Object struct {
	Kind      string // Namespace, ServiceAccount, Service or Gateway
	Namespace string // empty for a Namespace; a document without one is in "default"
	Name      string
}

// apiVersionOK says whether a document of apiVersion v can define an object of o's kind.
func (o Object) apiVersionOK(v string) bool {
	if o.Kind == "Gateway" {
		return strings.HasPrefix(v, "gateway.networking.k8s.io/")
	}
	return v == "v1"
}

func (o Object) String() string {
	if o.Kind == "Namespace" {
		return "Namespace " + o.Name
	}
	return o.Kind + " " + o.Namespace + "/" + o.Name
}

// SetNamespaceLabel sets label key=value on Namespace ns in every file under dir that defines
// it. When no file does, it creates dir/namespace-<ns>.yaml holding the Namespace.
func SetNamespaceLabel(dir, ns, key, value string) (Result, error) {
	return edit(dir, Object{Kind: "Namespace", Name: ns}, key, &value)
}

// RemoveNamespaceLabel removes label key from Namespace ns wherever it is defined. A
// Namespace that is defined nowhere has no label to remove: that is not an error.
func RemoveNamespaceLabel(dir, ns, key string) (Result, error) {
	return edit(dir, Object{Kind: "Namespace", Name: ns}, key, nil)
}

// SetLabel sets label key=value on obj in every file under dir that defines it. A Namespace
// or ServiceAccount defined nowhere is created in dir/<kind>-[<namespace>-]<name>.yaml; a
// Service defined nowhere is an error (there is no Service to bind).
func SetLabel(dir string, obj Object, key, value string) (Result, error) {
	return edit(dir, obj, key, &value)
}

// RemoveLabel removes label key from obj wherever it is defined; an object defined nowhere has
// no label to remove.
func RemoveLabel(dir string, obj Object, key string) (Result, error) {
	return edit(dir, obj, key, nil)
}

// chunk is one document of a file: the separator line that opened it (empty for the first)
// and its text up to the next separator.
type chunk struct {
	sep, body []byte
}

type file struct {
	path   string // as found under dir
	real   string // symlinks resolved: the file that is replaced
	mode   fs.FileMode
	chunks []chunk
	// docs are the indexes in chunks of the documents that define the Namespace.
	docs []int
}

func edit(dir string, obj Object, key string, value *string) (Result, error) {
	switch obj.Kind {
	case "Namespace":
		obj.Namespace = ""
	case "ServiceAccount", "Service":
	default:
		return Result{}, fmt.Errorf("kind %q: only the labels of a Namespace, ServiceAccount or Service can be edited", obj.Kind)
	}
	return update(dir, obj, func(body []byte) ([]byte, bool, error) { return setLabel(body, key, value) },
		func() (string, error) {
			if value == nil {
				return "", nil
			}
			if obj.Kind == "Service" {
				return "", fmt.Errorf("%s is defined in no file of %s", obj, dir)
			}
			return create(dir, obj, key, *value)
		})
}

// update applies change to every document under dir that defines obj; when none does,
// missing runs instead and returns the file it wrote ("" for none).
func update(dir string, obj Object, change func(body []byte) ([]byte, bool, error), missing func() (string, error)) (Result, error) {
	if obj.Kind != "Namespace" {
		if errs := validation.IsDNS1123Label(obj.Namespace); len(errs) > 0 {
			return Result{}, fmt.Errorf("namespace name %q: %s", obj.Namespace, strings.Join(errs, "; "))
		}
	}
	if errs := validation.IsDNS1123Label(obj.Name); len(errs) > 0 {
		return Result{}, fmt.Errorf("%s name %q: %s", strings.ToLower(obj.Kind), obj.Name, strings.Join(errs, "; "))
	}
	info, err := os.Stat(dir)
	if err != nil {
		return Result{}, fmt.Errorf("config dir: %w", err)
	}
	if !info.IsDir() {
		return Result{}, fmt.Errorf("config dir %s: not a directory", dir)
	}
	unlock, err := LockDir(dir)
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	files, err := find(dir, obj)
	if err != nil {
		return Result{}, err
	}
	var res Result
	if len(files) == 0 {
		path, err := missing()
		if err != nil || path == "" {
			return res, err
		}
		return Result{Files: []string{path}, Changed: true, Created: true}, nil
	}
	// Compute every new file before writing any, so that an error leaves the folder as it was.
	type write struct {
		f    *file
		data []byte
	}
	var writes []write
	for _, f := range files {
		res.Files = append(res.Files, f.path)
		changed := false
		for _, i := range f.docs {
			body, ok, err := change(f.chunks[i].body)
			if err != nil {
				return Result{}, fmt.Errorf("%s: document %d: %w; nothing was changed", f.path, i, err)
			}
			if ok {
				f.chunks[i].body = body
				changed = true
			}
		}
		if !changed {
			continue
		}
		var b bytes.Buffer
		for _, c := range f.chunks {
			b.Write(c.sep)
			b.Write(c.body)
		}
		if _, err := split(b.Bytes()); err != nil {
			return Result{}, fmt.Errorf("%s: edited file does not parse (a bug; nothing was written): %w", f.path, err)
		}
		writes = append(writes, write{f, b.Bytes()})
	}
	for _, w := range writes {
		if err := WriteFileAtomic(w.f.real, w.data, w.f.mode); err != nil {
			return res, err
		}
		res.Changed = true
	}
	return res, nil
}

// find returns the files under dir with a document defining obj, read the way
// source.Folder reads the folder: *.yaml and *.yml, subdirectories included, hidden files and
// hidden subdirectories skipped. Any file that does not parse is an error: it might be the one
// holding the Namespace.
func find(dir string, obj Object) ([]*file, error) {
	var out []*file
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		ext := filepath.Ext(path)
		if (ext != ".yaml" && ext != ".yml") || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			return err
		}
		info, err := os.Stat(real)
		if err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		data, err := os.ReadFile(real)
		if err != nil {
			return err
		}
		chunks, err := split(data)
		if err != nil {
			return fmt.Errorf("%s: %w; nothing was changed", path, err)
		}
		f := &file{path: path, real: real, mode: info.Mode().Perm(), chunks: chunks}
		for i, c := range chunks {
			doc, err := parse(c.body)
			if err != nil {
				return fmt.Errorf("%s: document %d: %w; nothing was changed", path, i, err)
			}
			if doc != nil && isObject(doc, obj) {
				f.docs = append(f.docs, i)
			}
		}
		if len(f.docs) > 0 {
			out = append(out, f)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("config dir %s: %w", dir, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out, nil
}

// split cuts a file into documents the way k8s.io/apimachinery's YAMLReader does: a line
// that starts with "---" separates documents and may be followed only by spaces or a comment.
func split(data []byte) ([]chunk, error) {
	chunks := []chunk{{}}
	for len(data) > 0 {
		n := bytes.IndexByte(data, '\n') + 1
		if n == 0 {
			n = len(data)
		}
		line := data[:n]
		data = data[n:]
		if bytes.HasPrefix(line, []byte("---")) {
			rest := bytes.TrimSpace(line[3:])
			if len(rest) > 0 && rest[0] != '#' {
				return nil, fmt.Errorf("invalid document separator %q", strings.TrimSpace(string(line)))
			}
			chunks = append(chunks, chunk{sep: line})
			continue
		}
		last := &chunks[len(chunks)-1]
		last.body = append(last.body, line...)
	}
	return chunks, nil
}

// parse returns the document's root node, or nil for a document of only comments and space.
func parse(body []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	// A second document inside one chunk cannot happen: split cut at every separator that
	// the YAML parser would also see.
	return &doc, nil
}

func isNamespace(doc *yaml.Node, ns string) bool {
	return isObject(doc, Object{Kind: "Namespace", Name: ns})
}

// isObject says whether doc defines obj (a core v1 kind).
func isObject(doc *yaml.Node, obj Object) bool {
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return false
	}
	if v := lookup(root, "kind"); v == nil || v.Value != obj.Kind {
		return false
	}
	if v := lookup(root, "apiVersion"); v == nil || !obj.apiVersionOK(v.Value) {
		return false
	}
	md := lookup(root, "metadata")
	if md == nil || md.Kind != yaml.MappingNode {
		return false
	}
	name := lookup(md, "name")
	if name == nil || name.Kind != yaml.ScalarNode || name.Value != obj.Name {
		return false
	}
	if obj.Kind == "Namespace" {
		return true
	}
	ns := "default"
	if v := lookup(md, "namespace"); v != nil && v.Kind == yaml.ScalarNode && v.Value != "" {
		ns = v.Value
	}
	return ns == obj.Namespace
}

// lookup returns the value of key in mapping m, or nil.
func lookup(m *yaml.Node, key string) *yaml.Node {
	if i := index(m, key); i >= 0 {
		return m.Content[i+1]
	}
	return nil
}

func index(m *yaml.Node, key string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return i
		}
	}
	return -1
}

// setLabel sets (value non-nil) or removes metadata.labels[key] in one Namespace document and
// reports whether that changed it. An unchanged document keeps its exact text.
func setLabel(body []byte, key string, value *string) ([]byte, bool, error) {
	doc, err := parse(body)
	if err != nil || doc == nil {
		return nil, false, fmt.Errorf("reparse: %v", err)
	}
	md := lookup(doc.Content[0], "metadata")
	li := index(md, "labels")
	var labels *yaml.Node
	if li >= 0 {
		labels = md.Content[li+1]
		switch {
		case labels.Kind == yaml.ScalarNode && labels.Tag == "!!null":
			labels = nil // "labels:" with nothing after it
		case labels.Kind == yaml.AliasNode || labels.Anchor != "":
			// Editing shared YAML would change the other places that use it too.
			return nil, false, fmt.Errorf("metadata.labels is a YAML anchor or alias; edit the file by hand")
		case labels.Kind != yaml.MappingNode:
			return nil, false, fmt.Errorf("metadata.labels is not a mapping")
		}
	}
	if value == nil {
		if labels == nil {
			return body, false, nil
		}
		ki := index(labels, key)
		if ki < 0 {
			return body, false, nil
		}
		labels.Content = append(labels.Content[:ki], labels.Content[ki+2:]...)
		if len(labels.Content) == 0 {
			md.Content = append(md.Content[:li], md.Content[li+2:]...)
		}
	} else {
		if labels == nil {
			labels = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			if li >= 0 {
				md.Content[li+1] = labels
			} else {
				md.Content = append(md.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "labels"}, labels)
			}
		}
		v := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: *value}
		if ki := index(labels, key); ki >= 0 {
			old := labels.Content[ki+1]
			if old.Kind == yaml.ScalarNode && old.Value == *value {
				return body, false, nil
			}
			v.LineComment = old.LineComment
			labels.Content[ki+1] = v
		} else {
			labels.Content = append(labels.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
		}
	}
	b, err := encode(doc)
	return b, err == nil, err
}

// create writes dir/namespace-<ns>.yaml (or serviceaccount-<ns>-<name>.yaml), or adds a
// document to it if it exists (without the object, or find would have found it).
func create(dir string, o Object, key, value string) (string, error) {
	base := strings.ToLower(o.Kind) + "-" + o.Name
	if o.Namespace != "" {
		base = strings.ToLower(o.Kind) + "-" + o.Namespace + "-" + o.Name
	}
	path := filepath.Join(dir, base+".yaml")
	var doc bytes.Buffer
	enc := yaml.NewEncoder(&doc)
	enc.SetIndent(2)
	type metadata struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace,omitempty"`
		Labels    map[string]string `yaml:"labels"`
	}
	obj := struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Metadata   metadata `yaml:"metadata"`
	}{"v1", o.Kind, metadata{o.Name, o.Namespace, map[string]string{key: value}}}
	if err := enc.Encode(obj); err != nil {
		return "", fmt.Errorf("encode %s: %w", o, err)
	}
	_ = enc.Close()
	head := "# Written by ambitctl namespace enable.\n"
	if o.Kind != "Namespace" {
		head = "# Written by ambitctl waypoint apply --enroll.\n"
	}
	data := append([]byte(head), doc.Bytes()...)
	mode := fs.FileMode(0o644)
	old, err := os.ReadFile(path)
	switch {
	case err == nil:
		if info, err := os.Stat(path); err == nil {
			mode = info.Mode().Perm()
		}
		if len(old) > 0 && old[len(old)-1] != '\n' {
			old = append(old, '\n')
		}
		data = append(append(old, "---\n"...), doc.Bytes()...)
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	return path, WriteFileAtomic(path, data, mode)
}

// WriteFileAtomic replaces path with data: it writes a hidden temporary file in the same
// directory (which the controller's folder source ignores), syncs it and renames it over
// path, so a reader sees the old file or the new one, never a mix.
func WriteFileAtomic(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
