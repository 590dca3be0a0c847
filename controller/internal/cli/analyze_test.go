package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ambit.dev/mesh/wait"

	"ambit.dev/controller/internal/source"
)

// TestAnalyzeRealController runs the controller in folder mode on the lab's config plus a file
// that does not decode (a field a Service does not have) and a policy that fails validation
// (a port that is not a number): `ambitctl analyze` lists both, naming the file, the object
// and the field, and exits 1; once both are fixed it finds nothing and exits 0.
func TestAnalyzeRealController(t *testing.T) {
	fc := startFolderController(t)
	cfgDir, debugAddr := fc.cfgDir, fc.debugAddr
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(cfgDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const svc = "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: demo}\nspec: {%s: {app: x}, ports: [{port: 80}]}\n"
	write("service.yaml", strings.Replace(svc, "%s", "selectr", 1))
	const policy = "apiVersion: security.ambit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: web-port, namespace: demo}\nspec:\n  rules:\n  - to:\n    - operation: {ports: [\"%s\"]}\n"
	write("policy.yaml", strings.Replace(policy, "%s", "eighty", 1))

	analyze := func(args ...string) (string, error) {
		return run(t, Options{}, append([]string{"analyze", "--controller-debug", debugAddr, "--lab-dir", noLab(t)}, args...)...)
	}
	var out string
	wait.Until(t, 10*time.Second, "both problems listed", func() error {
		var err error
		out, err = analyze()
		if err == nil || !strings.Contains(out, "service.yaml") || !strings.Contains(out, "AuthorizationPolicy demo/web-port") {
			return &waitErr{out, err}
		}
		return nil
	})
	for _, want := range []string{`unknown field "spec.selectr"`, "spec.rules[0].to[0].operation.ports[0]", "OBJECT", "FIELD"} {
		if !strings.Contains(out, want) {
			t.Errorf("analyze does not say %q:\n%s", want, out)
		}
	}
	// -o json: the records, the field apart.
	js, err := analyze("-o", "json")
	if err == nil {
		t.Fatal("analyze -o json with problems exited 0")
	}
	var problems []source.Problem
	if err := json.Unmarshal([]byte(js), &problems); err != nil {
		t.Fatalf("json: %v\n%s", err, js)
	}
	byObject := map[string]source.Problem{}
	for _, p := range problems {
		byObject[filepath.Base(p.Object)] = p
	}
	if len(problems) != 2 || byObject["web-port"].Field != "spec.rules[0].to[0].operation.ports[0]" ||
		!strings.Contains(byObject["service.yaml"].Error, `unknown field "spec.selectr"`) {
		t.Fatalf("problems %+v", problems)
	}

	// Fixed: nothing refused, exit 0.
	write("service.yaml", strings.Replace(svc, "%s", "selector", 1))
	write("policy.yaml", strings.Replace(policy, "%s", "80", 1))
	wait.Until(t, 10*time.Second, "no problems after the fixes", func() error {
		out, err := analyze()
		if err != nil || !strings.Contains(out, "No problems found") {
			return &waitErr{out, err}
		}
		return nil
	})
}

// TestAnalyzeIstioAndRoutes: Istio's four kinds and Gateway API's two route kinds, each
// refused for a field ambit does not implement or a value that is wrong, are each listed by
// `ambitctl analyze -o json` with the object and the field; so are, marked partial ("applied
// in part"), an Istio AuthorizationPolicy in force whose rule fails closed and an HTTPRoute in
// force that mirrors to a Service that does not exist.
func TestAnalyzeIstioAndRoutes(t *testing.T) {
	fc := startFolderController(t)
	const objects = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web}}]
    retries: {attempts: 2, retryRemoteLocalities: true}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  workloadSelector: {matchLabels: {app: web}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: demo}
spec:
  action: LOG
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec:
  mtls: {mode: STRICTER}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/users/(\\d+"}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Lua, name: script}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: demo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shadowed, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: server-shadow, port: 80}}}]
    backendRefs: [{name: server, port: 80}]
`
	if err := os.WriteFile(filepath.Join(fc.cfgDir, "refused.yaml"), []byte(objects), 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"VirtualService.networking.istio.io demo/web":      "spec.http[0].retries.retryRemoteLocalities",
		"DestinationRule.networking.istio.io demo/web":     "spec.workloadSelector",
		"AuthorizationPolicy.security.istio.io demo/audit": "spec.action",
		"PeerAuthentication.security.istio.io demo/strict": "spec.mtls.mode",
		"HTTPRoute demo/users":                             "spec.rules[0].matches[0].path.value",
		"GRPCRoute demo/echo":                              "spec.rules[0].filters[0].extensionRef",
		"AuthorizationPolicy.security.istio.io demo/jwt":   "spec.rules[0].from[0].source.requestPrincipals",
		"HTTPRoute demo/shadowed":                          "spec.rules[0].filters[0].requestMirror.backendRef",
	}
	wait.Until(t, 10*time.Second, "every refused object listed with its field", func() error {
		js, err := run(t, Options{}, "analyze", "--controller-debug", fc.debugAddr, "--lab-dir", noLab(t), "-o", "json")
		var problems []source.Problem
		if jerr := json.Unmarshal([]byte(js), &problems); jerr != nil || err == nil {
			return &waitErr{js, err}
		}
		got := map[string]string{}
		for _, p := range problems {
			got[p.Object] = p.Field
			if p.Partial != (strings.HasSuffix(p.Object, "demo/jwt") || strings.HasSuffix(p.Object, "demo/shadowed")) {
				return &waitErr{fmt.Sprintf("%s: partial %v\n%s", p.Object, p.Partial, js), err}
			}
		}
		for obj, field := range want {
			if got[obj] != field {
				return &waitErr{fmt.Sprintf("%s: field %q, want %q\n%s", obj, got[obj], field, js), err}
			}
		}
		return nil
	})
	out, err := run(t, Options{}, "analyze", "--controller-debug", fc.debugAddr, "--lab-dir", noLab(t))
	if err == nil || !strings.Contains(out, "applied in part: not enforced by ambit") || !strings.Contains(err.Error(), "refuses 6 object(s)") ||
		!strings.Contains(err.Error(), "leaves 2 part(s)") || !strings.Contains(out, "Service demo/server-shadow does not exist") {
		t.Errorf("analyze: %v\n%s", err, out)
	}
}

type waitErr struct {
	out string
	err error
}

func (e *waitErr) Error() string {
	if e.err != nil {
		return e.err.Error() + "\n" + e.out
	}
	return "exit 0:\n" + e.out
}
