// Package capture does in-pod traffic redirection, the way Istio ambient's in-pod mode does:
// ztunnel enters an enrolled pod's network namespace, installs iptables rules there that send
// the pod's outbound TCP to 15001 and its inbound TCP (except HBONE on 15008) to 15006, and
// opens its listeners inside the namespace. Its own sockets carry mark 0x539 and skip the
// rules. Nothing is installed on the node, so a pod's capture lives and dies with the pod.
//
// Inbound, ztunnel connects to the application from the original client's address
// (IP_TRANSPARENT, Dial with DialOptions.Source), so the application sees who called, as
// with Istio's in-pod ztunnel. The application's replies go to that foreign address; mangle
// rules carry a connection mark (0x111) from ztunnel's marked packets to the replies, and a
// policy rule (fwmark 0x111/0xfff, pref 32764, table 100 with one local default route on lo)
// delivers them back to ztunnel's socket instead of out of the pod.
//
// Rules are written in ambit's own chains (AMBIT_*) reached by one jump each from the
// built-in chains (nat and mangle), so enrolment and removal are idempotent and removal
// leaves the namespace exactly as it was: rules, tables, policy rules and routes.
package capture
