#!/usr/bin/env bash
# kube-apiserver.sh builds kube-apiserver from the k8s.io/kubernetes Go module pinned in
# tools/kube/go.mod into .cache/bin/kube-apiserver, for the end-to-end tests against a real API
# server (controller/internal/kubetest). The build takes minutes, so it runs once: a binary whose
# stamp (.cache/bin/kube-apiserver.stamp) matches the pinned module, its go.sum and the Go
# toolchain is kept. Modules come through the Go module proxy (GOPROXY); nothing else is needed.
#
#   hack/kube-apiserver.sh          build if missing or stale, print the path
#   hack/kube-apiserver.sh --check  exit 1 if the binary is missing or stale, build nothing
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

mod=tools/kube
out=${AMBIT_KUBE_APISERVER:-$root/.cache/bin/kube-apiserver}
stamp=$out.stamp

version=$(sed -n 's/^\(require\)\{0,1\}[[:space:]]*k8s.io\/kubernetes \(v[0-9][^ ]*\).*$/\2/p' "$mod/go.mod")
if [[ -z $version ]]; then
	echo "kube-apiserver: no k8s.io/kubernetes requirement in $mod/go.mod" >&2
	exit 1
fi
want="k8s.io/kubernetes $version $(go env GOVERSION) $(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)"

if [[ -x $out && -f $stamp && $(cat "$stamp") == "$want" ]]; then
	echo "kube-apiserver: $out is up to date ($version)"
	exit 0
fi
if [[ ${1:-} == --check ]]; then
	echo "kube-apiserver: $out is missing or stale; run 'make kube-apiserver'" >&2
	exit 1
fi

major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

echo "kube-apiserver: building $version into $out (takes several minutes the first time)"
mkdir -p "$(dirname "$out")"
start=$(date +%s)
rm -f "$stamp"
# CGO off: a static binary that needs nothing from the system but etcd beside it.
(cd "$mod" && GOWORK=off CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" \
	-o "$out.tmp.$$" k8s.io/kubernetes/cmd/kube-apiserver)
mv -f "$out.tmp.$$" "$out" # a build per process: two concurrent builds each land whole
echo "$want" >"$stamp"
echo "kube-apiserver: built $("$out" --version) in $(($(date +%s) - start))s"
