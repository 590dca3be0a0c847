#!/usr/bin/env bash
# proto-check.sh regenerates the Go code of the .proto files into the tree and fails when the
# result differs from what is committed: a .proto edited without make proto, a generated file
# edited by hand, or a generated file never added to git.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	echo "proto-check: not in a git work tree; cannot compare with what is committed" >&2
	exit 1
fi

hack/protogen.sh

generated=':(glob)proto/**/*.pb.go'
fail=0
if ! git diff --quiet -- "$generated"; then
	echo "proto-check: generated code differs from what is committed:" >&2
	git --no-pager diff --stat -- "$generated" >&2
	fail=1
fi
untracked=$(git ls-files --others --exclude-standard -- "$generated")
if [[ -n $untracked ]]; then
	echo "proto-check: generated files not in git:" >&2
	echo "$untracked" >&2
	fail=1
fi
if [[ $fail -ne 0 ]]; then
	echo "proto-check: run 'make proto' and commit the .proto files with their generated Go" >&2
	exit 1
fi
echo "proto-check: generated code is up to date"
