#!/usr/bin/env bash
# setup.sh installs the system tools ambit's build, tests and local lab use, from Debian's
# packages. It installs only what is missing, so a second run does nothing and needs no
# network. It starts no services: the lab runs its own etcd and haproxy when it needs them.
set -euo pipefail

# binary:package, one per tool; a path instead of a binary checks for that file.
tools=(
	protoc:protobuf-compiler
	# protoc's well-known types (google/protobuf/duration.proto, …): a recommendation of
	# protobuf-compiler, which --no-install-recommends leaves out.
	/usr/include/google/protobuf/duration.proto:libprotobuf-dev
	iptables:iptables
	ip:iproute2
	haproxy:haproxy
	# make bench's other mTLS peers: nginx with its stream module, and stunnel.
	nginx:nginx
	/usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream
	stunnel4:stunnel4
	etcd:etcd-server
	tcpdump:tcpdump
	nft:nftables
	nsenter:util-linux
	# The test cluster's node (controller/internal/clustertest): container runtime, OCI runtime
	# and the CNI bridge, host-local and loopback plugins.
	containerd:containerd
	runc:runc
	/usr/lib/cni/bridge:containernetworking-plugins
)

have() {
	if [[ $1 == /* ]]; then
		[[ -e $1 ]]
		return
	fi
	command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

missing=()
for t in "${tools[@]}"; do
	if ! have "${t%%:*}"; then
		missing+=("${t#*:}")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	echo "setup: all tools present (${tools[*]%%:*})" | sed 's#/usr/include/google/protobuf/duration.proto#protoc-includes#'
	exit 0
fi

echo "setup: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup: apt-get not found; install these Debian packages (or your system's equivalents) by hand: ${missing[*]}" >&2
	exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "setup: must run as root (or with sudo available) to install ${missing[*]}" >&2
		exit 1
	fi
	sudo=(sudo)
fi

# Keep the packages' maintainer scripts from starting etcd, haproxy, nginx, stunnel and
# containerd as system services.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 755 "$policy"
	trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

for t in "${tools[@]}"; do
	if ! have "${t%%:*}"; then
		echo "setup: ${t%%:*} still missing after installing ${t#*:}" >&2
		exit 1
	fi
done
echo "setup: done"
