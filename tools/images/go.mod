// Module images builds ambit's container images as OCI image tarballs without Docker or a
// registry (hack/images.sh, `make images`), and the pause binary of the test cluster's pod
// sandboxes. It is not part of go.work, so that go-containerregistry stays out of the product
// modules: build it with GOWORK=off.
module ambit.dev/tools/images

go 1.26.8

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
