// Command images builds ambit's container images as OCI image tarballs: each image is one
// static binary on an empty base, named <repo>/<name>:<version>, in <out>/<name>.tar, loadable
// with `ctr -n k8s.io images import`. The same binaries and version give the same digests: every
// time in the images is fixed (-created, default the Unix epoch) and tar entries are sorted.
// <out>/images.txt lists what was built, one image a line: "<ref> <manifest digest> <file>".
//
//	images -out DIR -version V NAME=BINARY:UID...
//
// hack/images.sh builds the binaries and calls it (`make images`).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	out := fs.String("out", ".cache/images", "directory for <name>.tar and images.txt")
	version := fs.String("version", "", "the images' tag (required)")
	repo := fs.String("repo", "ambit.dev", "prefix of the image names")
	created := fs.Int64("created", 0, "Unix time written into the images (configs, history, tar headers)")
	arch := fs.String("arch", runtime.GOARCH, "architecture of the binaries")
	extras := map[string]string{}
	fs.Func("extra", "NAME=DIR: put the tree under DIR into image NAME too (repeatable)", func(v string) error {
		name, dir, ok := strings.Cut(v, "=")
		if !ok || name == "" || dir == "" {
			return fmt.Errorf("want NAME=DIR, not %q", v)
		}
		extras[name] = dir
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" {
		return fmt.Errorf("-version is required")
	}
	specs, err := parseSpecs(fs.Args())
	if err != nil {
		return err
	}
	for i := range specs {
		specs[i].Extra = extras[specs[i].Name]
		delete(extras, specs[i].Name)
	}
	for name := range extras {
		return fmt.Errorf("-extra %s: no such image", name)
	}
	o := Options{Repo: *repo, Version: *version, Created: time.Unix(*created, 0).UTC(), Arch: *arch}
	lines, err := Build(*out, specs, o)
	if err != nil {
		return err
	}
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

// parseSpecs reads NAME=BINARY:UID arguments.
func parseSpecs(args []string) ([]Spec, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("no images given (NAME=BINARY:UID)")
	}
	var specs []Spec
	seen := map[string]bool{}
	for _, a := range args {
		name, rest, ok := strings.Cut(a, "=")
		i := strings.LastIndex(rest, ":")
		if !ok || name == "" || i <= 0 {
			return nil, fmt.Errorf("image %q: want NAME=BINARY:UID", a)
		}
		uid, err := strconv.Atoi(rest[i+1:])
		if err != nil || uid < 0 {
			return nil, fmt.Errorf("image %q: bad uid %q", a, rest[i+1:])
		}
		if seen[name] {
			return nil, fmt.Errorf("image %q given twice", name)
		}
		seen[name] = true
		specs = append(specs, Spec{Name: name, Binary: rest[:i], UID: uid})
	}
	return specs, nil
}

// Build writes <out>/<name>.tar for every spec and <out>/images.txt, and returns the lines of
// images.txt. A tarball whose content is unchanged is not rewritten.
func Build(out string, specs []Spec, o Options) ([]string, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	var lines []string
	for _, s := range specs {
		img, err := Image(s, o)
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		ref := o.Ref(s)
		if err := WriteOCI(&buf, img, ref, o.Version, o.Created); err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		digest, err := img.Digest()
		if err != nil {
			return nil, err
		}
		file := s.Name + ".tar"
		if err := writeIfChanged(filepath.Join(out, file), buf.Bytes()); err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		lines = append(lines, ref+" "+digest.String()+" "+file)
	}
	sort.Strings(lines)
	if err := writeIfChanged(filepath.Join(out, "images.txt"), []byte(strings.Join(lines, "\n")+"\n")); err != nil {
		return nil, err
	}
	return lines, nil
}

// writeIfChanged replaces path with data atomically, unless it already holds exactly data.
func writeIfChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
