// Package gobuild builds the project's commands for a test the way the images have them
// (hack/images.sh): static (CGO_ENABLED=0), with -trimpath, and without DWARF (which the
// images' -s -w drop at the link), the flags hack/goflags.sh writes for every static build
// of the project. A test's lab then runs the binaries a node runs, and it
// compiles only what changed: `make test` builds the images first, so every dependency's
// compiled form with these flags is already in Go's build cache, where a plain `go build`
// (cgo on, full paths) would compile all of them once more (client-go's tree among them:
// minutes on a cold machine).
package gobuild

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Flags are the static builds' compiler flags, hack/goflags.sh's static_flags (a test checks
// that the two say the same).
var Flags = []string{"-trimpath", "-gcflags=all=-dwarf=false"}

// Build runs `go build <Flags> -o out pkgs...` in dir with cgo off, adding env (such as
// GOWORK=...) to the process's environment. out ending in "/" is a directory for several
// commands, as with go build. The error carries the compiler's output.
func Build(dir, out string, env []string, pkgs ...string) error {
	if len(pkgs) == 0 {
		return fmt.Errorf("gobuild: no packages to build into %s", out)
	}
	args := append(append(append([]string{"build"}, Flags...), "-o", out), pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", strings.Join(pkgs, " "), err, b)
	}
	return nil
}
