package source

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	"ambit.dev/controller/internal/istioapi"
)

// DefaultPollInterval is how often Folder looks for changed files.
const DefaultPollInterval = 500 * time.Millisecond

// Folder reads Kubernetes objects from the *.yaml and *.yml files under a directory
// (multi-document, subdirectories included) and keeps the Store in step with them.
type Folder struct {
	dir      string
	store    *Store
	log      *slog.Logger
	decoder  runtime.Decoder
	interval time.Duration

	files   map[string]*fileState
	current map[string]runtime.Object // object key → object, the union of every good file
}

type fileState struct {
	mod  time.Time
	size int64
	hash [32]byte
	objs map[string]runtime.Object
}

// NewFolder returns a Folder source for dir. interval 0 means DefaultPollInterval.
func NewFolder(dir string, store *Store, log *slog.Logger, interval time.Duration) (*Folder, error) {
	s, err := NewScheme()
	if err != nil {
		return nil, fmt.Errorf("folder source: scheme: %w", err)
	}
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	return &Folder{dir: dir, store: store, log: log, decoder: strictDecoder(s), interval: interval,
		files: map[string]*fileState{}, current: map[string]runtime.Object{}}, nil
}

// Run loads the directory, marks the store synced, then polls for changes until ctx ends. It
// fails only when the directory cannot be read at start.
func (f *Folder) Run(ctx context.Context) error {
	if err := f.Scan(); err != nil {
		return err
	}
	f.store.MarkSynced()
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := f.Scan(); err != nil {
				f.log.Error("scan config dir", "dir", f.dir, "error", err)
			}
		}
	}
}

// Scan reads the files that changed since the last Scan and applies the difference to the
// store. A file that does not decode is logged and its last good objects stay.
func (f *Folder) Scan() error {
	seen := map[string]bool{}
	changed := false
	err := filepath.WalkDir(f.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == f.dir {
				return err
			}
			f.log.Error("read config dir", "path", path, "error", err)
			return nil
		}
		if d.IsDir() {
			if path != f.dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir // editors' and Kubernetes ConfigMap mounts' hidden dirs
			}
			return nil
		}
		ext := filepath.Ext(path)
		if (ext != ".yaml" && ext != ".yml") || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		seen[path] = true
		info, err := os.Stat(path) // follows symlinks, unlike d.Info
		if err != nil {
			f.log.Error("stat config file", "file", path, "error", err)
			return nil
		}
		st := f.files[path]
		if st != nil && st.mod.Equal(info.ModTime()) && st.size == info.Size() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			f.log.Error("read config file", "file", path, "error", err)
			return nil
		}
		h := sha256.Sum256(data)
		if st != nil && st.hash == h {
			st.mod, st.size = info.ModTime(), info.Size()
			return nil
		}
		objs, err := f.decode(path, data)
		if err != nil {
			f.store.Refused(path, fmt.Errorf("invalid config file, its last good objects stay: %w", err))
			if st != nil {
				st.mod, st.size, st.hash = info.ModTime(), info.Size(), h
			} else {
				f.files[path] = &fileState{mod: info.ModTime(), size: info.Size(), hash: h}
			}
			return nil
		}
		f.store.Decoded(path)
		f.files[path] = &fileState{mod: info.ModTime(), size: info.Size(), hash: h, objs: objs}
		changed = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("folder source %s: %w", f.dir, err)
	}
	for path := range f.files {
		if !seen[path] {
			delete(f.files, path)
			f.store.Decoded(path)
			changed = true
		}
	}
	if changed {
		f.apply()
	}
	return nil
}

// apply diffs the union of every file's objects against what the store was given.
func (f *Folder) apply() {
	next := map[string]runtime.Object{}
	paths := make([]string, 0, len(f.files))
	for p := range f.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		for k, o := range f.files[p].objs {
			if _, dup := next[k]; dup {
				f.log.Error("object defined twice, the first file wins", "object", k, "file", p)
				continue
			}
			next[k] = o
		}
	}
	for k, o := range next {
		if old, ok := f.current[k]; !ok || old != o {
			f.store.Upsert(o)
		}
	}
	for k, o := range f.current {
		if _, ok := next[k]; !ok {
			f.store.Delete(o)
		}
	}
	f.current = next
}

// decode parses every document of a file. Any bad document fails the whole file, so a file
// is applied all or nothing.
func (f *Folder) decode(path string, data []byte) (map[string]runtime.Object, error) {
	out := map[string]runtime.Object{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := f.decoder.Decode(doc, nil, nil)
		if err != nil {
			name := ""
			if obj != nil {
				if m, merr := meta.Accessor(obj); merr == nil {
					name = " " + m.GetNamespace() + "/" + m.GetName()
				}
			}
			kind := ""
			if gvk != nil {
				kind = " " + gvk.Kind
			}
			return nil, fmt.Errorf("%s: document %d%s%s: %w", path, i, kind, name, err)
		}
		m, err := meta.Accessor(obj)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
		case *corev1.Pod:
			defaultLabPod(o)
		case *corev1.Service, *corev1.ServiceAccount, *gatewayv1.Gateway, *gatewayv1.HTTPRoute, *gatewayv1.GRPCRoute,
			*secv1.AuthorizationPolicy, *secv1.PeerAuthentication,
			*istioapi.VirtualService, *istioapi.DestinationRule, *istioapi.AuthorizationPolicy, *istioapi.PeerAuthentication:
		default:
			return nil, fmt.Errorf("%s: document %d: kind %s %s is not supported", path, i, gvk.Kind, m.GetName())
		}
		if m.GetName() == "" {
			return nil, fmt.Errorf("%s: document %d %s: metadata.name: empty", path, i, gvk.Kind)
		}
		if _, isNS := obj.(*corev1.Namespace); !isNS && m.GetNamespace() == "" {
			m.SetNamespace("default")
		}
		// The group is part of the key: ambit's and Istio's AuthorizationPolicy may share a name.
		key := gvk.GroupKind().String() + " " + m.GetNamespace() + "/" + m.GetName()
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("%s: document %d: %s defined twice", path, i, key)
		}
		out[key] = obj
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			b.Write(t)
		}
	}
	return b.Bytes()
}

// defaultLabPod makes a lab pod that lists addresses but no phase Running and Ready: in the
// lab a pod is a network namespace that exists as soon as it is written down.
func defaultLabPod(p *corev1.Pod) {
	if p.Status.Phase != "" || (p.Status.PodIP == "" && len(p.Status.PodIPs) == 0) {
		return
	}
	p.Status.Phase = corev1.PodRunning
	if len(p.Status.PodIPs) == 0 {
		p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	if p.Status.PodIP == "" {
		p.Status.PodIP = p.Status.PodIPs[0].IP
	}
	if len(p.Status.Conditions) == 0 {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
}

// ParseFile checks a file as the folder source would read it: every document a supported
// kind with a name, decoded strictly. `ambitctl lab apply` refuses a file that fails here
// before it reaches the controller's folder.
func ParseFile(path string, data []byte) ([]runtime.Object, error) {
	s, err := NewScheme()
	if err != nil {
		return nil, err
	}
	f := &Folder{decoder: strictDecoder(s)}
	objs, err := f.decode(path, data)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(objs))
	for k := range objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]runtime.Object, 0, len(objs))
	for _, k := range keys {
		out = append(out, objs[k])
	}
	return out, nil
}
