// Package mesh is the root of the shared implementation: the code that both proxies, or all
// programs, use — HBONE (hbone), SPIFFE identity and the CA (identity), the proxies' xDS
// client (xdsclient), a proxy's view of the mesh (state), authorization (authz), revocation
// of identities that leave the mesh (revoke), batched logging (logging), the proxies'
// start-up (proxyhost), the tests' polling helper (wait) and the lock that keeps the
// machine's heavy end-to-end suites apart (e2elock). It holds no code of its own; its test
// enforces the module rules of the whole repository (docs/architecture.md, "Modules"):
//
//	proto       imports only proto          (contracts import no program)
//	mesh        imports proto, mesh
//	ztunnel     imports proto, mesh         (never waypoint, never controller)
//	waypoint    imports proto, mesh         (never ztunnel, never controller)
//	controller  imports proto, mesh         (never a proxy)
//	bench       imports any module          (it drives every program)
//	compat/*    imports proto, mesh
package mesh
