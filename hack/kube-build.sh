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
. hack/goflags.sh

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

# The commands that are missing or stale, and where each goes.
stale=()
outs=()
for cmd in "$@"; do
	if ! grep -q "k8s.io/kubernetes/cmd/$cmd\$" "$mod/go.mod"; then
		echo "kube-build: $cmd is not a tool of $mod/go.mod" >&2
		exit 1
	fi
	out=$root/.cache/bin/$cmd
	if [[ $cmd == kube-apiserver && -n ${AMBIT_KUBE_APISERVER:-} ]]; then
		out=$AMBIT_KUBE_APISERVER
	fi
	if [[ -x $out && -f $out.stamp && $(cat "$out.stamp") == "$want" ]]; then
		echo "kube-build: $out is up to date ($version)"
		continue
	fi
	if ((check)); then
		echo "kube-build: $out is missing or stale; run 'make kube-apiserver' or 'make kube-node'" >&2
		exit 1
	fi
	stale+=("$cmd")
	outs+=("$out")
done
if ((${#stale[@]} == 0)); then
	exit 0
fi

# One go build for all of them: the commands share most of their packages, and one build
# keeps both cores busy, where one build per command links each alone (a link takes a core
# for tens of seconds).
echo "kube-build: building ${stale[*]} $version (takes many minutes the first time)"
start=$(date +%s)
tmp=$root/.cache/bin/.kube-build.$$
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
pkgs=()
for i in "${!stale[@]}"; do
	rm -f "${outs[$i]}.stamp"
	pkgs+=("k8s.io/kubernetes/cmd/${stale[$i]}")
done
# Static (hack/goflags.sh): binaries that need nothing from the system (etcd, containerd and
# runc come from Debian's packages), and no DWARF, which -s -w would drop at the link anyway:
# about a tenth less compile time.
(cd "$mod" && GOWORK=off CGO_ENABLED=0 nice -n 10 go build "${static_flags[@]}" -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
for i in "${!stale[@]}"; do
	mkdir -p "$(dirname "${outs[$i]}")"
	# A build per process: two concurrent builds each land whole.
	mv -f "$tmp/${stale[$i]}" "${outs[$i]}.tmp.$$"
	mv -f "${outs[$i]}.tmp.$$" "${outs[$i]}"
	echo "$want" >"${outs[$i]}.stamp"
done
echo "kube-build: built ${stale[*]} $version in $(($(date +%s) - start))s"
