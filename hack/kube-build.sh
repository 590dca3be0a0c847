#!/usr/bin/env bash
# kube-build.sh builds Kubernetes commands from the k8s.io/kubernetes Go module pinned in
# tools/kube/go.mod into .cache/bin/<command>: kube-apiserver for the end-to-end tests against
# a real API server (controller/internal/kubetest), and the node's commands (kubelet,
# kube-controller-manager, kube-scheduler, kubectl, kube-proxy) for the cluster tests. A build
# takes minutes, so it runs once: a binary whose stamp (<binary>.stamp) matches the pinned
# module, its go.sum and the Go toolchain is kept. Modules come through the Go module proxy
# (GOPROXY); nothing else is needed.
#
#   hack/kube-build.sh [--check] COMMAND...   build the commands that are missing or stale
#                                             (--check: exit 1 if one is, build nothing)
#
# AMBIT_KUBE_APISERVER overrides where kube-apiserver goes (and is looked for).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

check=0
if [[ ${1:-} == --check ]]; then
	check=1
	shift
fi
if [[ $# -eq 0 ]]; then
	echo "usage: $0 [--check] COMMAND..." >&2
	exit 2
fi

mod=tools/kube
version=$(sed -n 's/^\(require\)\{0,1\}[[:space:]]*k8s.io\/kubernetes \(v[0-9][^ ]*\).*$/\2/p' "$mod/go.mod")
if [[ -z $version ]]; then
	echo "kube-build: no k8s.io/kubernetes requirement in $mod/go.mod" >&2
	exit 1
fi
want="k8s.io/kubernetes $version $(go env GOVERSION) $(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)"

major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

for cmd in "$@"; do
	if ! grep -q "k8s.io/kubernetes/cmd/$cmd\$" "$mod/go.mod"; then
		echo "kube-build: $cmd is not a tool of $mod/go.mod" >&2
		exit 1
	fi
	out=$root/.cache/bin/$cmd
	if [[ $cmd == kube-apiserver && -n ${AMBIT_KUBE_APISERVER:-} ]]; then
		out=$AMBIT_KUBE_APISERVER
	fi
	stamp=$out.stamp
	if [[ -x $out && -f $stamp && $(cat "$stamp") == "$want" ]]; then
		echo "kube-build: $out is up to date ($version)"
		continue
	fi
	if ((check)); then
		echo "kube-build: $out is missing or stale; run 'make kube-apiserver' or 'make kube-node'" >&2
		exit 1
	fi
	echo "kube-build: building $cmd $version into $out (takes several minutes the first time)"
	mkdir -p "$(dirname "$out")"
	start=$(date +%s)
	rm -f "$stamp"
	# CGO off: static binaries that need nothing from the system (etcd, containerd and runc
	# come from Debian's packages).
	(cd "$mod" && GOWORK=off CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" \
		-o "$out.tmp.$$" "k8s.io/kubernetes/cmd/$cmd")
	mv -f "$out.tmp.$$" "$out" # a build per process: two concurrent builds each land whole
	echo "$want" >"$stamp"
	echo "kube-build: built $cmd $version in $(($(date +%s) - start))s"
done
