package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestReproducible: the same binary gives the same image and the same tarball whatever the
// binary file's time and whenever it is built; the tarball is an OCI layout naming the image.
func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := Options{Repo: "ambit.dev", Version: "v1", Created: time.Unix(0, 0).UTC(), Arch: "amd64"}
	var outs [][]byte
	for i := range 2 {
		if err := os.Chtimes(bin, time.Now().Add(time.Duration(i)*time.Hour), time.Now()); err != nil {
			t.Fatal(err)
		}
		lines, err := Build(filepath.Join(dir, "out"+string(rune('a'+i))), []Spec{{Name: "app", Binary: bin, UID: 65532}}, o)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "out"+string(rune('a'+i)), "app.tar"))
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, b)
		t.Log(lines)
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatal("two builds of the same binary differ")
	}

	tr := tar.NewReader(bytes.NewReader(outs[0]))
	var names []string
	var index v1.IndexManifest
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(o.Created) {
			t.Errorf("%s: time %v", h.Name, h.ModTime)
		}
		names = append(names, h.Name)
		if h.Name == "index.json" {
			if err := json.NewDecoder(tr).Decode(&index); err != nil {
				t.Fatal(err)
			}
		}
	}
	if names[len(names)-1] != "oci-layout" || len(index.Manifests) != 1 {
		t.Fatalf("not an OCI layout with one image: %v, %+v", names, index)
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != "ambit.dev/app:v1" {
		t.Errorf("containerd image name %q", got)
	}
}

// TestExtraTree: an image's extra tree (a tool, a symbolic link to it, a library) goes in at
// /, owned by root, with links kept as links; a file the image has already is an error.
func TestExtraTree(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	extra := filepath.Join(dir, "rootfs")
	for _, d := range []string{"usr/sbin", "lib/x86_64-linux-gnu"} {
		if err := os.MkdirAll(filepath.Join(extra, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(extra, "usr/sbin/tool"), []byte("elf"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(extra, "lib/x86_64-linux-gnu/libx.so.1"), []byte("lib"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(extra, "usr/sbin/tool-restore")); err != nil {
		t.Fatal(err)
	}
	lt, err := layerTar(Spec{Name: "app", UID: 0, Extra: extra}, []byte("bin"), time.Unix(0, 0).UTC())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(lt))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	for name, want := range map[string]byte{"usr/sbin/tool": tar.TypeReg, "usr/sbin/tool-restore": tar.TypeSymlink,
		"lib/x86_64-linux-gnu/libx.so.1": tar.TypeReg, "usr/local/bin/app": tar.TypeReg, "usr/sbin/": tar.TypeDir} {
		h := got[name]
		if h == nil || h.Typeflag != want || h.Uid != 0 {
			t.Errorf("%s: %+v, want type %c owned by root", name, h, want)
		}
	}
	if h := got["usr/sbin/tool-restore"]; h != nil && h.Linkname != "tool" {
		t.Errorf("link target %q", h.Linkname)
	}
	if h := got["usr/sbin/tool"]; h != nil && h.Mode != 0o755 {
		t.Errorf("tool mode %o", h.Mode)
	}
	// A file the image has already (its binary) is refused.
	if err := os.MkdirAll(filepath.Join(extra, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(extra, "usr/local/bin/app"), []byte("other"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := layerTar(Spec{Name: "app", Extra: extra}, []byte("bin"), time.Unix(0, 0).UTC()); err == nil {
		t.Error("an extra file over the image's own binary was accepted")
	}
}
