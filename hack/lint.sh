#!/usr/bin/env bash
# lint.sh checks every module of the workspace with gofmt, go vet and staticcheck (the version
# pinned by the tool directive in proto/go.mod).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. hack/goflags.sh

mapfile -t dirs < <(hack/packages.sh --dirs)
mapfile -t pkgs < <(hack/packages.sh)
# Modules under compat/ stay out of go.work so that their dependency graphs (Istio's) never
# enter the workspace; they get gofmt here and go vet, with GOWORK=off, at the end.
mapfile -t compat < <(for m in compat/*/go.mod; do [[ -f $m ]] && dirname "$m"; done)
dirs+=("${compat[@]}")

unformatted=$(gofmt -l "${dirs[@]}")
if [[ -n $unformatted ]]; then
	echo "lint: gofmt would change these files (run gofmt -w on them):" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "lint: gofmt ok"

if [[ ${#pkgs[@]} -eq 0 ]]; then
	echo "lint: no Go packages yet; go vet and staticcheck skipped"
	exit 0
fi

# go vet and staticcheck compile every dependency for its type information. With -race that
# is the compiled form the unit tests (go test -race) use, so lint and unit share one
# compilation of the whole tree instead of doing it twice (client-go's packages among them:
# minutes on a cold machine). A race build leaves out the files written for builds without
# the race detector (//go:build !race); their packages get one more vet, static and trimmed
# as the images are built, whose compiled dependencies `make images` has left in the cache.
race=(env GOFLAGS="${GOFLAGS:+$GOFLAGS }-race")
"${race[@]}" go vet "${pkgs[@]}"
mapfile -t norace < <(grep -rl --include='*.go' '^//go:build !race$' "${dirs[@]}" | xargs -r -n1 dirname | sort -u | sed 's#^#./#')
if [[ ${#norace[@]} -gt 0 ]]; then
	static_go vet "${norace[@]}"
fi
echo "lint: go vet ok (${#norace[@]} package(s) also without -race)"
"${race[@]}" go tool staticcheck "${pkgs[@]}"
echo "lint: staticcheck ok"

for m in "${compat[@]}"; do
	(cd "$m" && GOWORK=off "${race[@]}" go vet ./...)
	echo "lint: go vet ok in $m (outside go.work)"
done
