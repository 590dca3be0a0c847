#!/usr/bin/env bash
# fuzz.sh runs each native Go fuzz target it is given for a short while (a count of executions).
#
#   hack/fuzz.sh [-t 20000x] ./mesh/identity:FuzzParseCSR ./mesh/hbone:FuzzConnectRequest ...
#
# Each argument is <package dir>:<FuzzFunction>[:<fuzztime>]; the optional third part overrides
# -t for that target (e.g. 20x: a count of executions, for a target whose executions are slow,
# since a time limit that ends inside a long execution fails with "context deadline exceeded").
# A target that does not exist is an error, not a silent pass: go test -fuzz with a pattern
# that matches nothing would exit 0.
set -euo pipefail

fuzztime=20000x
if [[ ${1:-} == -t ]]; then
	fuzztime=$2
	shift 2
fi

if [[ $# -eq 0 ]]; then
	echo "fuzz: no fuzz targets listed (FUZZ in the Makefile is empty)"
	exit 0
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
for target in "$@"; do
	pkg=${target%%:*}
	fn=${target#*:}
	time=$fuzztime
	if [[ $fn == *:* ]]; then
		time=${fn#*:}
		fn=${fn%%:*}
	fi
	if [[ $pkg == "$target" || -z $pkg || -z $fn || $fn != Fuzz* ]]; then
		echo "fuzz: bad target '$target': want <package dir>:<FuzzFunction>" >&2
		exit 1
	fi
	echo "fuzz: $pkg $fn for $time"
	# go test passes when the pattern matches no target, saying only this warning. (Asking
	# first with go test -list would build the package's tests once more, uninstrumented.)
	# No DWARF: nothing debugs these binaries, and the instrumented build of every package
	# they link is most of this script's time.
	go test -gcflags=all=-dwarf=false -run '^$' -fuzz "^${fn}\$" -fuzztime "$time" "$pkg" 2>&1 | tee "$out"
	if grep -q '^testing: warning: no fuzz tests to fuzz' "$out"; then
		echo "fuzz: $pkg has no fuzz target $fn; fix FUZZ in the Makefile" >&2
		exit 1
	fi
done
