#!/usr/bin/env bash
# bench-hbone.sh runs the HBONE package's benchmarks COUNT times (default 5) and prints the
# median of each and the ratios the HBONE issue sets targets for:
#   round trip: hbone ≤ 1.15 × mtls      throughput: hbone ≥ 0.9 × mtls
# All three paths run in the same process, interleaved, so the ratios come from one run.
# JUDGE=0 prints the same table and ratios without failing on a missed target (the smoke run
# of mesh/hbone's TestBenchScript, with BENCHTIME=1x: it checks that the script works).
set -euo pipefail
cd "$(dirname "$0")/../mesh"
count=${COUNT:-5}
benchtime=${BENCHTIME:-2s}
judge=${JUDGE:-1}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkRoundTrip|BenchmarkThroughput' -benchtime "$benchtime" -count "$count" ./hbone | tee "$out"
awk -v judge="$judge" '
/^Benchmark(RoundTrip|Throughput)\// {
	name=$1; sub(/-[0-9]+$/, "", name)
	ns[name]=ns[name] " " $3
	if ($6 == "MB/s") mbs[name]=mbs[name] " " $5
	if ($0 ~ /allocs\/op/) { allocs[name]=$(NF-1) }
}
function median(list,   a, n, i, j, t) {
	n=split(list, a, " ")
	for (i=1; i<=n; i++) for (j=i+1; j<=n; j++) if (a[j]+0 < a[i]+0) { t=a[i]; a[i]=a[j]; a[j]=t }
	return (n%2) ? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2
}
END {
	printf "\n%-32s %12s %10s %8s\n", "benchmark (median)", "ns/op", "MB/s", "allocs"
	for (k in ns) {
		printf "%-32s %12.0f %10s %8s\n", k, median(ns[k]), (k in mbs) ? sprintf("%.0f", median(mbs[k])) : "-", allocs[k]
	}
	rt=median(ns["BenchmarkRoundTrip/hbone"]) / median(ns["BenchmarkRoundTrip/mtls"])
	tp=median(mbs["BenchmarkThroughput/hbone"]) / median(mbs["BenchmarkThroughput/mtls"])
	printf "\nround trip  hbone/mtls = %.2f (target <= 1.15)\n", rt
	printf "throughput  hbone/mtls = %.2f (target >= 0.90)\n", tp
	if (judge && (rt > 1.15 || tp < 0.9)) exit 1
}' "$out"
