package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Spec is one image: a single static binary on an empty base.
type Spec struct {
	// Name is the part's name: the image is <Repo>/<Name>:<Version>, the binary
	// /usr/local/bin/<Name> and the image's entrypoint.
	Name string
	// Binary is the path of the static binary to put in.
	Binary string
	// UID is the user (and group) the image runs as: 65532 (nonroot) where the part allows,
	// 0 for a part that needs root.
	UID int
	// Extra, when set, is a directory whose tree (directories, files, symbolic links) goes
	// into the image at /, owned by root: the tools a part runs (ztunnel's iptables) with the
	// shared libraries they load.
	Extra string
}

// Options apply to every image of a build.
type Options struct {
	// Repo is the image name's prefix, "ambit.dev".
	Repo string
	// Version is the tag.
	Version string
	// Created is the time written into the config, the history and every tar header: a fixed
	// time, so that the same inputs give the same digests.
	Created time.Time
	// Arch is the platform's architecture (GOARCH of the binaries).
	Arch string
}

// Ref is the image's name.
func (o Options) Ref(s Spec) string { return o.Repo + "/" + s.Name + ":" + o.Version }

// file is one entry of the image's single layer.
type file struct {
	name string // without a leading slash; a directory ends in "/"
	mode int64
	uid  int
	data []byte
	link string // a symbolic link's target
}

// extraFiles reads the tree under dir as layer entries (no times, no owners but root).
func extraFiles(dir string) ([]file, error) {
	var out []file
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			out = append(out, file{name: name + "/", mode: 0o755})
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			out = append(out, file{name: name, mode: 0o777, link: target})
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			mode := int64(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			out = append(out, file{name: name, mode: mode, data: data})
		default:
			return fmt.Errorf("%s: not a directory, file or symbolic link", path)
		}
		return nil
	})
	return out, err
}

// passwd and group name root and nonroot, so that user lookups in the image work.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group  = "root:x:0:\nnonroot:x:65532:\n"
)

// layerTar is the layer's uncompressed tar: parents before children, sorted, every header
// with the same time and numeric owners only.
func layerTar(s Spec, bin []byte, created time.Time) ([]byte, error) {
	files := []file{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "home/", mode: 0o755},
		{name: "home/nonroot/", mode: 0o700, uid: 65532},
		{name: "root/", mode: 0o700},
		{name: "tmp/", mode: 0o1777},
		{name: "usr/", mode: 0o755},
		{name: "usr/local/", mode: 0o755},
		{name: "usr/local/bin/", mode: 0o755},
		{name: "usr/local/bin/" + s.Name, mode: 0o755, data: bin},
	}
	if s.Extra != "" {
		extra, err := extraFiles(s.Extra)
		if err != nil {
			return nil, err
		}
		have := map[string]bool{}
		for _, f := range files {
			have[f.name] = true
		}
		for _, f := range extra {
			if have[f.name] {
				if f.name[len(f.name)-1] == '/' {
					continue // a directory both have
				}
				return nil, fmt.Errorf("extra %s: %s is in the image already", s.Extra, f.name)
			}
			files = append(files, f)
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name:    f.name,
			Mode:    f.mode,
			Uid:     f.uid,
			Gid:     f.uid,
			ModTime: created,
			Format:  tar.FormatPAX,
		}
		if f.link != "" {
			h.Typeflag = tar.TypeSymlink
			h.Linkname = f.link
		} else if f.name[len(f.name)-1] == '/' {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image builds the image of s.
func Image(s Spec, o Options) (v1.Image, error) {
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	lt, err := layerTar(s, bin, o.Created)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Name, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(lt)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Name, err)
	}
	user := strconv.Itoa(s.UID) + ":" + strconv.Itoa(s.UID)
	created := v1.Time{Time: o.Created}
	cfg := &v1.ConfigFile{
		Architecture: o.Arch,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			Entrypoint: []string{"/usr/local/bin/" + s.Name},
			User:       user,
			Env:        []string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			WorkingDir: "/",
			Labels: map[string]string{
				"org.opencontainers.image.title":   "ambit " + s.Name,
				"org.opencontainers.image.version": o.Version,
			},
		},
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(base, cfg)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", s.Name, err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: created, CreatedBy: "ambit images: /usr/local/bin/" + s.Name + " as " + user},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	return img, nil
}

// WriteOCI writes img as an OCI image layout in one tar (oci-layout, index.json, blobs/sha256/…),
// the form `ctr images import` and `skopeo copy oci-archive:` read. The index names the image
// by ref in the annotation containerd reads (io.containerd.image.name) and by its tag in the
// OCI one. Entries are sorted and carry the fixed time of created.
func WriteOCI(w io.Writer, img v1.Image, ref, tag string, created time.Time) error {
	manifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	blobs := map[string][]byte{
		digest.Hex:  manifest,
		cfgName.Hex: config,
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		blobs[d.Hex] = data
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt,
			Digest:    digest,
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": tag,
			},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	entry := func(name string, data []byte) error {
		h := &tar.Header{Name: name, Mode: 0o644, ModTime: created, Format: tar.FormatPAX, Typeflag: tar.TypeReg, Size: int64(len(data))}
		if data == nil {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := entry("blobs/", nil); err != nil {
		return err
	}
	if err := entry("blobs/sha256/", nil); err != nil {
		return err
	}
	names := make([]string, 0, len(blobs))
	for h := range blobs {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, h := range names {
		if err := entry(path.Join("blobs/sha256", h), blobs[h]); err != nil {
			return err
		}
	}
	if err := entry("index.json", indexJSON); err != nil {
		return err
	}
	if err := entry("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	return tw.Close()
}
