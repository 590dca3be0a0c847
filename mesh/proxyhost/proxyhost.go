// Package proxyhost is what ztunnel and the waypoint do alike around their proxy, written
// once: the admin (/config_dump and Go's profiles), metrics (/metrics) and readiness
// (/healthz/ready) endpoints, whose listeners all open before anything runs so that an
// address in use fails the start; the Prometheus registry they export; and readiness, the way
// Istio's ztunnel answers it — 503 with the reason until every xDS type has arrived once
// (SyncTracker) and the certificates serve, then 200 "ready".
//
// The proxies' own start-up (config source, certificates, hand-over) stays in their app
// packages; this package holds only what both would otherwise write twice.
package proxyhost
