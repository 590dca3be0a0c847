// Package capture does in-pod traffic redirection, the way Istio ambient's in-pod mode does:
// ztunnel enters an enrolled pod's network namespace, installs iptables rules there that send
// the pod's outbound TCP to 15001 and its inbound TCP (except HBONE on 15008) to 15006, and
// opens its listeners inside the namespace. Its own sockets carry mark 0x539 and skip the
// rules. Nothing is installed on the node, so a pod's capture lives and dies with the pod.
//
// Rules are written in ambit's own chains (AMBIT_*) reached by one jump each from the
// built-in chains, so enrolment and removal are idempotent and removal leaves the namespace
// exactly as it was.
package capture
