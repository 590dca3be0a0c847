#!/usr/bin/env bash
# make demo: the mesh on the local lab, in the steps a newcomer watches. Each step says what
# it shows and checks it; the exit status is 0 only if every step behaved as shown.
set -euo pipefail
cd "$(dirname "$0")/.."

AMBITCTL=bin/ambitctl
LAB=examples/lab.yaml
SERVER=http://10.77.2.2:8080/   # demo/server on node-b; the client is on node-a
VIP=http://10.96.0.10            # Service demo/server: demo/server (v1) and demo/server-2 (v2)
BRIDGE=ambitlabbr
LABDIR=/run/ambit-lab            # the lab's state dir (ambitctl lab --lab-dir), with its logs/
WORK=$(mktemp -d)
step=0
bold=$'\e[1m' green=$'\e[32m' red=$'\e[31m' off=$'\e[0m'
[[ -t 1 ]] || bold='' green='' red='' off=''

say()  { step=$((step + 1)); printf '\n%s%d. %s%s\n' "$bold" "$step" "$*" "$off"; }
run()  { printf '   $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/     /'; return "${PIPESTATUS[0]}"; }
ok()   { printf '   %s✔ %s%s\n' "$green" "$*" "$off"; }
fail() { printf '   %s✘ %s%s\n' "$red" "$*" "$off"; exit 1; }

cleanup() {
	[[ -n ${TCPDUMP_PID:-} ]] && kill "$TCPDUMP_PID" 2>/dev/null || true
	"$AMBITCTL" lab down >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# capture NAME CMD...: run CMD while tcpdump records the lab bridge into $WORK/NAME.pcap,
# and keep CMD's output in $WORK/NAME.out.
capture() {
	local name=$1; shift
	tcpdump -i "$BRIDGE" -nn --immediate-mode -U -w "$WORK/$name.pcap" tcp 2>"$WORK/$name.tcpdump" &
	TCPDUMP_PID=$!
	for _ in $(seq 100); do grep -q 'listening on' "$WORK/$name.tcpdump" && break; sleep 0.05; done
	local rc=0
	"$@" >"$WORK/$name.out" 2>&1 || rc=$?
	sleep 0.3
	kill "$TCPDUMP_PID"; wait "$TCPDUMP_PID" 2>/dev/null || true; TCPDUMP_PID=
	sed 's/^/     /' "$WORK/$name.out"
	return $rc
}
# seen NAME FILTER: the packets of capture NAME matching FILTER, with payloads in ASCII.
seen() { tcpdump -r "$WORK/$1.pcap" -nn -A "$2" 2>/dev/null; }

say "Bring the lab up: a bridge, one network namespace per pod, the controller, one ztunnel per node"
"$AMBITCTL" lab down >/dev/null # start from scratch, whatever an earlier run left
run "$AMBITCTL" lab up -f "$LAB" || fail "lab up failed"
run "$AMBITCTL" lab status || fail "the lab is not healthy"
ok "lab up: demo/client on node-a, demo/server on node-b; the demo namespace is not in the mesh yet"

say "demo/client calls demo/server; the call crosses the bridge in plaintext"
printf '   $ %s lab call demo/client %s   (tcpdump on %s)\n' "$AMBITCTL" "$SERVER" "$BRIDGE"
capture plain "$AMBITCTL" lab call demo/client "$SERVER" || fail "the plaintext call failed"
grep -q 'caller identity: none' "$WORK/plain.out" || fail "the server should see no identity"
seen plain 'tcp port 8080' | grep -q 'GET / HTTP/1.1' || fail "the capture should show the request in plaintext"
printf '     packet capture: %s\n' "$(seen plain 'tcp port 8080' | grep -m1 -o 'GET / HTTP/1.1')"
ok "the request is readable on the wire, and the server has no idea who called"

say "Enrol the namespace: ambitctl namespace enable demo"
run "$AMBITCTL" namespace enable demo || fail "namespace enable failed"
run "$AMBITCTL" lab wait --namespace demo || fail "the ztunnels did not capture the pods"
ok "every pod of demo is captured by its node's ztunnel, without touching the applications"

say "The same call, now in the mesh"
printf '   $ %s lab call demo/client %s   (tcpdump on %s)\n' "$AMBITCTL" "$SERVER" "$BRIDGE"
capture mesh "$AMBITCTL" lab call demo/client "$SERVER" || fail "the call in the mesh failed"
grep -q 'caller identity: spiffe://cluster.local/ns/demo/sa/client' "$WORK/mesh.out" ||
	fail "the server should report the client's SPIFFE identity"
hbone=$(seen mesh 'tcp port 15008' | grep -c '10.77.1.2\.[0-9]* > 10.77.2.2\.15008' || true)
(( hbone > 0 )) || fail "the capture should show HBONE to the server's port 15008"
! seen mesh 'tcp port 8080' | grep -q '10.77.' || fail "nothing should cross the bridge to port 8080 any more"
! seen mesh tcp | grep -q 'GET / HTTP' || fail "the request must not be readable on the wire"
printf '     packet capture: %d packets 10.77.1.2 → 10.77.2.2:15008 (HBONE: HTTP/2 CONNECT in TLS 1.3), none to :8080, no plaintext HTTP\n' "$hbone"
ok "the call crossed the bridge as mutual TLS, and the server saw spiffe://cluster.local/ns/demo/sa/client"

say "An L4 deny policy: nothing from the client's identity reaches the server"
sed -n '/^apiVersion/,$p' examples/policies/deny-client.yaml | sed 's/^/     /'
run "$AMBITCTL" lab apply -f examples/policies/deny-client.yaml || fail "apply failed"
printf '   $ %s lab call demo/client %s\n' "$AMBITCTL" "$SERVER"
denied=0
for _ in $(seq 50); do
	if ! "$AMBITCTL" lab call --timeout 2s demo/client "$SERVER" >"$WORK/deny.out" 2>&1; then denied=1; break; fi
	sleep 0.1
done
(( denied )) || fail "the call should be refused once the policy is in"
sed 's/^/     /' "$WORK/deny.out"
# The destination ztunnel logs the refusal with the policy's name (its log lines are written
# in batches, so the line may land a moment after the call failed).
line=
for _ in $(seq 50); do
	line=$(grep -m1 'inbound denied.*policy=demo/deny-client' "$LABDIR/logs/ztunnel-node-b.log" || true)
	[[ -n $line ]] && break
	sleep 0.1
done
[[ -n $line ]] || fail "ztunnel node-b should log the refusal naming policy demo/deny-client"
printf '     ztunnel node-b: %s\n' "$line"
ok "the destination ztunnel refused the connection: policy demo/deny-client"

say "Remove the policy: the call works again"
run "$AMBITCTL" lab delete -f examples/policies/deny-client.yaml || fail "delete failed"
printf '   $ %s lab call demo/client %s\n' "$AMBITCTL" "$SERVER"
back=0
for _ in $(seq 50); do
	if "$AMBITCTL" lab call --timeout 2s demo/client "$SERVER" >"$WORK/back.out" 2>&1; then back=1; break; fi
	sleep 0.1
done
(( back )) || fail "the call should pass again once the policy is gone"
sed 's/^/     /' "$WORK/back.out"
ok "allowed again"

say "A waypoint for the server's service account: from here on, the server's traffic goes through an L7 proxy"
printf '   (calls now go to %s, the address of Service demo/server, which the waypoint routes)\n' "$VIP"
run "$AMBITCTL" waypoint apply --for serviceaccount --name server-wp --target server -n demo --enroll || fail "waypoint apply failed"
via=0
for _ in $(seq 100); do
	if "$AMBITCTL" lab call --timeout 2s demo/client "$VIP" 2>/dev/null | grep -q 'caller identity: spiffe://cluster.local/ns/demo/sa/server-wp'; then via=1; break; fi
	sleep 0.1
done
(( via )) || fail "the server should now be called by its waypoint"
run "$AMBITCTL" waypoint status || fail "waypoint status failed"
printf '   $ %s lab call demo/client %s\n' "$AMBITCTL" "$VIP"
"$AMBITCTL" lab call demo/client "$VIP" | sed 's/^/     /'
ok "the server's callers now reach it through waypoint server-wp, which the server sees as its caller"

say "A 90/10 canary of Service server across v1 and v2 (an HTTPRoute the waypoint applies)"
sed -n '/^apiVersion/,$p' examples/policies/canary.yaml | sed 's/^/     /'
run "$AMBITCTL" lab apply -f examples/policies/canary.yaml || fail "apply failed"
for _ in $(seq 100); do
	"$AMBITCTL" lab call demo/client "$VIP" --count 20 >"$WORK/probe.out" 2>&1 || true
	[[ $(awk '$1 == "demo/server" {print $3}' "$WORK/probe.out") -ge 15 ]] && break
	sleep 0.1
done
printf '   $ %s lab call demo/client %s --count 200\n' "$AMBITCTL" "$VIP"
"$AMBITCTL" lab call demo/client "$VIP" --count 200 >"$WORK/canary.out" 2>&1 || { sed 's/^/     /' "$WORK/canary.out"; fail "canary calls failed"; }
sed 's/^/     /' "$WORK/canary.out"
v1=$(awk '$1 == "demo/server" && $2 == 200 {print $3}' "$WORK/canary.out")
v2=$(awk '$1 == "demo/server-2" && $2 == 200 {print $3}' "$WORK/canary.out")
(( ${v1:-0} + ${v2:-0} == 200 )) || fail "every one of the 200 calls should succeed"
(( v1 >= 160 && v1 <= 194 )) || fail "v1 should take about 90% (got $v1 of 200)"
ok "$v1 of 200 calls went to v1 (demo/server), $v2 to v2 (demo/server-2)"

say "An L7 deny at the waypoint: no POST or DELETE to /admin"
sed -n '/^apiVersion/,$p' examples/policies/l7-deny-admin.yaml | sed 's/^/     /'
run "$AMBITCTL" lab apply -f examples/policies/l7-deny-admin.yaml || fail "apply failed"
denied=0
for _ in $(seq 100); do
	if "$AMBITCTL" lab call demo/client "$VIP/admin" -X DELETE >"$WORK/l7.out" 2>&1; then sleep 0.1; continue; fi
	grep -q 'access denied: denied by policy demo/deny-admin-writes' "$WORK/l7.out" && { denied=1; break; }
	sleep 0.1
done
(( denied )) || { sed 's/^/     /' "$WORK/l7.out"; fail "DELETE /admin should be denied by the waypoint, naming policy demo/deny-admin-writes"; }
printf '   $ %s lab call demo/client %s/admin -X DELETE\n' "$AMBITCTL" "$VIP"
sed 's/^/     /' "$WORK/l7.out"
run "$AMBITCTL" lab call demo/client "$VIP/admin" || fail "GET /admin should still pass"
ok "the waypoint answered 403 itself, naming policy demo/deny-admin-writes; reads still pass"

say "Take the lab down"
run "$AMBITCTL" lab down || fail "lab down failed"
ip netns list | grep -q '^ambitlab-' && fail "namespaces left behind"
ok "every process, namespace and link of the lab is gone"

printf '\n%sdemo: every step behaved as shown%s\n' "$green" "$off"
