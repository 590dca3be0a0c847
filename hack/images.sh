#!/usr/bin/env bash
# images.sh builds ambit's container images as OCI image tarballs, without Docker or a
# registry (`make images`): each part's static binary (CGO_ENABLED=0, -trimpath, no build id)
# on an empty base, named ambit.dev/<part>:<version>, in <out>/<part>.tar, and <out>/images.txt
# listing "<ref> <manifest digest> <file>" per image. The same commit gives the same digests.
# Load one into containerd with `ctr -n k8s.io images import <out>/<part>.tar`.
#
#   hack/images.sh [--out DIR] [--version V]   (defaults: .cache/images, `git describe --always --dirty`)
#
# The builder is tools/images, a module of its own outside go.work (go-containerregistry stays
# out of the product modules).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The images, one a line: name, the main package (a directory; one under tools/images is built
# in that module), and the user it runs as (65532 = nonroot; 0 where the part needs root).
images=(
	"controller ./controller/cmd/controller 65532"
	"ztunnel ./ztunnel/cmd/ztunnel 0"
	"waypoint ./waypoint/cmd/waypoint 65532"
	"node-agent ./node/cmd/ambit-node-agent 0"
	"testapp ./controller/internal/clustertest/testapp 65532"
	"pause ./tools/images/pause 65532"
)

out=.cache/images
version=
while [[ $# -gt 0 ]]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	*) echo "usage: $0 [--out DIR] [--version V]" >&2; exit 2 ;;
	esac
done
if [[ -z $version ]]; then
	version=$(git describe --always --dirty 2>/dev/null || echo dev)
fi
mkdir -p "$out/bin" .cache/bin
out=$(cd "$out" && pwd)

# The static builds' flags (hack/goflags.sh), which the tests' lab binaries share (mesh/gobuild),
# and a link without symbols, DWARF, build id or VCS stamp.
. hack/goflags.sh
export CGO_ENABLED=0
flags=("${static_flags[@]}" -buildvcs=false -ldflags=-s\ -w\ -buildid=)

(cd tools/images && GOWORK=off go build "${flags[@]}" -o "$root/.cache/bin/images" .)

args=()
for line in "${images[@]}"; do
	read -r name pkg uid <<<"$line"
	bin=$out/bin/$name
	if [[ $pkg == ./tools/images/* ]]; then
		(cd tools/images && GOWORK=off go build "${flags[@]}" -o "$bin" "./${pkg#./tools/images/}")
	else
		go build "${flags[@]}" -o "$bin" "$pkg"
	fi
	args+=("$name=$bin:$uid")
done

# ztunnel's capture runs iptables (the nf_tables backend), ip, nft and nsenter inside the pods'
# network namespaces: its image carries them, with every shared library they and iptables'
# extensions load, copied from this machine's Debian packages (make setup installs them), at
# the paths the dynamic loader looks in. The same packages give the same image.
ztunnel_tools() {
	local dir=$1 b lib
	rm -rf "$dir"
	local bins=(/usr/sbin/xtables-nft-multi /usr/bin/ip /usr/bin/nsenter /usr/sbin/nft)
	local xt=/usr/lib/x86_64-linux-gnu/xtables
	for b in "${bins[@]}"; do
		[[ -x $b ]] || { echo "images: $b missing (make setup installs iptables, iproute2, nftables, util-linux)" >&2; exit 1; }
		install -D -m 0755 "$b" "$dir$b"
	done
	for b in iptables iptables-restore iptables-save; do
		ln -s xtables-nft-multi "$dir/usr/sbin/$b"
	done
	mkdir -p "$dir$xt"
	cp "$xt"/*.so "$dir$xt/"
	# ldd of several files heads each list with "<file>:"; the libraries are "=> /path" and
	# the loader's own line.
	for lib in $(ldd "${bins[@]}" "$xt"/*.so | grep -v ':$' | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
		# the loader must be executable (the kernel runs it); libraries keep 0644
		local mode=0644
		[[ $lib == */ld-linux* ]] && mode=0755
		install -D -m $mode "$(readlink -f "$lib")" "$dir$lib"
	done
}
ztunnel_tools "$out/rootfs-ztunnel"

.cache/bin/images -out "$out" -version "$version" -extra ztunnel="$out/rootfs-ztunnel" "${args[@]}" >/dev/null
echo "images: ambit.dev/{$(IFS=,; for l in "${images[@]}"; do printf '%s,' "${l%% *}"; done | sed 's/,$//')}:$version in $out ($(du -sh --exclude=bin --exclude=rootfs-ztunnel "$out" | cut -f1))"
