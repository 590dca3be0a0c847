#!/usr/bin/env bash
# bench.sh runs the data-plane benchmark (bench/cmd/bench) on its own lab: it builds the lab's
# binaries and the harness into .cache/bench-bin, then `bench run` brings the lab up, runs
# every scenario back to back, writes bench/results (and, for the full run,
# docs/benchmarks.md) and brings the lab down.
#
#   hack/bench.sh            make bench
#   hack/bench.sh --quick    make bench-quick (under two minutes; bench/results/quick only)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. hack/goflags.sh

if [[ $(id -u) -ne 0 ]]; then
	echo "bench: needs root (the lab creates network namespaces, links and iptables rules)" >&2
	exit 1
fi
bin=.cache/bench-bin
mkdir -p "$bin"
# The mesh's binaries as the images ship them (hack/images.sh): static, without cgo, so that
# no C library is mapped into the proxies.
# bench's own command too, as the harness's test builds it (mesh/gobuild): one compiled form
# of the packages they share.
static_go build -o "$bin/" ambit.dev/controller/cmd/controller ambit.dev/controller/cmd/ambitctl \
	ambit.dev/ztunnel/cmd/ztunnel ambit.dev/waypoint/cmd/waypoint ambit.dev/bench/cmd/bench
# the istio-go-hbone peer: Istio's Go HBONE, from compat/istio (its own module, outside go.work)
(cd compat/istio && GOWORK=off static_go build -o "$root/$bin/" ./cmd/istio-hbone-peer)
cmd="make bench"
if [[ ${1:-} == --quick ]]; then
	cmd="make bench-quick"
fi
exec "$bin/bench" run --bin-dir "$bin" --command "$cmd" "$@"
