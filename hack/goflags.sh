# shellcheck shell=bash
# goflags.sh, sourced: the one place the flags of the project's static builds are written.
# The images (hack/images.sh), `make build`, bench's binaries, the code generators,
# Kubernetes' commands (hack/kube-build.sh) and lint's extra vet use them, and so do the
# tests' lab binaries (mesh/gobuild, whose test checks that its Flags say the same as this
# file). One set of flags is one compiled form of every package in Go's build cache, shared
# by all of those builds; a build with other flags compiles the whole tree again (client-go's
# packages among them: minutes on a cold machine).
#
#   static_flags  the flags: paths trimmed from the binary, and no DWARF from the compiler
#                 (the images' -s -w drop it at the link anyway)
#   static_go     go with cgo off (no C library in a binary) and static_flags:
#                 static_go build -o bin/ ./cmd/x   is   CGO_ENABLED=0 go build -trimpath ... -o bin/ ./cmd/x
static_flags=(-trimpath -gcflags=all=-dwarf=false)

static_go() {
	local verb=$1
	shift
	CGO_ENABLED=0 go "$verb" "${static_flags[@]}" "$@"
}
