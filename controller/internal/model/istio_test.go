package model

import (
	"slices"
	"strings"
	"testing"

	configv1 "ambit.dev/proto/config/v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	"ambit.dev/controller/internal/istioapi"
)

func wantProto(t *testing.T, what string, want, got proto.Message) {
	t.Helper()
	if !proto.Equal(want, got) {
		t.Fatalf("%s:\n got %s\nwant %s", what, prototext.Format(got), prototext.Format(want))
	}
}

func durationOf(s string) *durationpb.Duration {
	d, err := istioDuration(s)
	if err != nil {
		panic(err)
	}
	return durationpb.New(d)
}

// webRoute is an HTTPRoute on Service demo/web, 90/10 to web-v1 and web-v2.
func webRoute() *gatewayv1.HTTPRoute {
	hr := httpRoute("demo", "web-route", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("web-v1", 80, ptr(int32(90))), backend("web-v2", 80, ptr(int32(10)))}})
	hr.Spec.ParentRefs = []gatewayv1.ParentReference{{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "web"}}
	return hr
}

func ambitPolicy(ns, name string) *secv1.AuthorizationPolicy {
	return &secv1.AuthorizationPolicy{ObjectMeta: meta(ns, name, nil), Spec: secv1.AuthorizationPolicySpec{
		Selector: &secv1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}}}}
}

// istioObj decodes one Istio object written as YAML.
func istioObj[T runtime.Object](t *testing.T, doc string) T {
	t.Helper()
	out := istioapi.New(strings.TrimSpace(strings.SplitN(strings.SplitN(doc, "kind:", 2)[1], "\n", 2)[0])).(T)
	if err := yaml.UnmarshalStrict([]byte(doc), out); err != nil {
		t.Fatal(err)
	}
	return out
}

const webDR = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

const webVS = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - name: canary
    match:
    - headers: {x-canary: {exact: "true"}}
    route:
    - destination: {host: web, subset: v2}
  - route:
    - {destination: {host: web, subset: v1}, weight: 80}
    - {destination: {host: web.demo.svc.cluster.local, subset: v2, port: {number: 80}}, weight: 20}
    retries: {attempts: 3, retryOn: "gateway-error,connect-failure,409,unavailable", perTryTimeout: 2s}
    timeout: 5s
`

const webRC = "demo/web.demo.svc.cluster.local"

func routeConfig(x *Index) *configv1.RouteConfig {
	r, ok := x.For(Proxy{Kind: KindWaypoint, Namespace: "demo", Name: "wp"})[configv1.RouteConfigTypeURL][webRC]
	if !ok {
		return nil
	}
	return r.Message.(*configv1.RouteConfig)
}

func istioTestIndex(t *testing.T, objs ...runtime.Object) *Index {
	t.Helper()
	base := []runtime.Object{
		namespace("demo", map[string]string{LabelIstioDataplaneMode: ModeAmbient}),
		waypointGW("demo", "wp", "service", "10.0.0.9"),
		service("demo", "web", "10.96.0.1", map[string]string{LabelIstioUseWaypoint: "wp"}, map[string]string{"app": "web"}),
	}
	x, errs := Build(Options{}, append(base, objs...))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return x
}

func TestVirtualServiceSubsets(t *testing.T) {
	x := istioTestIndex(t, istioObj[*istioapi.DestinationRule](t, webDR), istioObj[*istioapi.VirtualService](t, webVS))
	rc := routeConfig(x)
	if rc == nil {
		t.Fatal("no RouteConfig for web (is the Service bound through istio.io/use-waypoint?)")
	}
	v1, v2 := map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	want := &configv1.RouteConfig{Hostname: "web.demo.svc.cluster.local", Namespace: "demo", Routes: []*configv1.Route{
		{Name: "canary", Matches: []*configv1.RouteMatch{{Headers: []*configv1.HeaderMatch{{Name: "x-canary", Value: "true"}}}},
			Backends: []*configv1.Backend{{Hostname: "web.demo.svc.cluster.local", Weight: 100, Subset: v2, SubsetName: "v2"}}},
		{Name: "demo/web/1", Matches: []*configv1.RouteMatch{{}},
			Backends: []*configv1.Backend{
				{Hostname: "web.demo.svc.cluster.local", Weight: 80, Subset: v1, SubsetName: "v1"},
				{Hostname: "web.demo.svc.cluster.local", Port: 80, Weight: 20, Subset: v2, SubsetName: "v2"}},
			Timeouts: &configv1.Timeouts{Request: durationOf("5s"), BackendRequest: durationOf("2s")},
			Retry:    &configv1.Retry{Attempts: 3, Codes: []uint32{409, 502, 503, 504}, On: []string{"connect-failure", "reset"}, GrpcCodes: []uint32{14}}},
	}}
	wantProto(t, "RouteConfig", want, rc)
}

func TestVirtualServiceMatches(t *testing.T) {
	vs := istioObj[*istioapi.VirtualService](t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match:
    - headers: {x-user: {prefix: admin-}, x-debug: {}}
      withoutHeaders: {x-bot: {exact: "yes"}}
      queryParams: {v: {exact: "2"}}
      authority: {prefix: web}
      sourceNamespace: demo
      sourceLabels: {app: client}
      ignoreUriCase: true
      uri: {prefix: /Api}
    - gateways: [ingress]            # for ingress only: no route at the waypoint
      uri: {prefix: /ingress}
    route: [{destination: {host: web}}]
`)
	got, err := ConvertVirtualService(vs, Options{}.WithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	rs := got.Parents[webRC]
	if len(rs) != 1 {
		t.Fatalf("%d routes, want 1 (the ingress-only match left out)", len(rs))
	}
	wantProto(t, "match", &configv1.RouteMatch{
		Path: &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: "/Api"}}, PathIgnoreCase: true,
		Headers: []*configv1.HeaderMatch{
			{Name: "x-bot", Value: "yes", Invert: true},
			{Name: "x-debug", Present: true},
			{Name: "x-user", Prefix: "admin-"},
		},
		QueryParams:     []*configv1.QueryMatch{{Name: "v", Value: "2"}},
		Authority:       &configv1.HeaderMatch{Prefix: "web"},
		SourceNamespace: "demo", SourceLabels: map[string]string{"app": "client"},
	}, rs[0].Route.Matches[0])
}

func TestVirtualServiceWinsOverHTTPRoute(t *testing.T) {
	hr := webRoute()
	x := istioTestIndex(t, hr, istioObj[*istioapi.DestinationRule](t, webDR))
	if rc := routeConfig(x); rc == nil || rc.Routes[0].Name != "demo/web-route/0" {
		t.Fatalf("before the VirtualService: %v", rc)
	}
	vs := istioObj[*istioapi.VirtualService](t, webVS)
	if err := x.Upsert(vs); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if rc := routeConfig(x); rc.Routes[0].Name != "canary" {
		t.Fatalf("with the VirtualService: %v", rc)
	}
	if err := x.Delete(vs); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if rc := routeConfig(x); rc == nil || rc.Routes[0].Name != "demo/web-route/0" {
		t.Fatalf("after the VirtualService: %v", rc)
	}
}

func TestVirtualServiceUndefinedSubsetKeepsLastGood(t *testing.T) {
	x := istioTestIndex(t, istioObj[*istioapi.DestinationRule](t, webDR), istioObj[*istioapi.VirtualService](t, webVS))
	good := routeConfig(x)
	bad := istioObj[*istioapi.VirtualService](t, strings.Replace(webVS, "subset: v1", "subset: v3", 1))
	if err := x.Upsert(bad); err != nil {
		t.Fatal(err) // valid alone: the subset is checked against the DestinationRules at commit
	}
	x.Commit()
	if !proto.Equal(routeConfig(x), good) {
		t.Fatal("the RouteConfig changed; want the last good one")
	}
	errs := x.CommitErrors()
	if len(errs) != 1 {
		t.Fatalf("commit errors %v, want one", errs)
	}
	wantObjErr(t, errs[0], KindIstioVirtualService, "demo", "web", "spec.http[1].route[0].destination.subset")
	if !strings.Contains(errs[0].Error(), `"v3" is not a subset`) || len(x.Errors()) != 1 {
		t.Fatalf("error %v; Errors() = %v", errs[0], x.Errors())
	}
	// The DestinationRule gains v3: the VirtualService resolves, the error goes.
	if err := x.Upsert(istioObj[*istioapi.DestinationRule](t, webDR+"  - {name: v3, labels: {version: v3}}\n")); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if len(x.Errors()) != 0 || routeConfig(x).Routes[1].Backends[0].SubsetName != "v3" {
		t.Fatalf("after defining v3: errors %v, routes %v", x.Errors(), routeConfig(x))
	}
}

func TestVirtualServiceErrors(t *testing.T) {
	tests := []struct {
		name, from, to, field, msg string
	}{
		{"weights", "weight: 20}", "weight: 10}", "spec.http[1].route", "add up to 90, not 100"},
		{"regex", `{exact: "true"}`, `{regex: "t(.*"}`, "spec.http[0].match[0].headers[x-canary].regex", "not a regular expression"},
		{"scheme", `- headers: {x-canary: {exact: "true"}}`, `- scheme: {exact: https}`, "spec.http[0].match[0].scheme", "not supported"},
		{"query prefix", `- headers: {x-canary: {exact: "true"}}`, `- queryParams: {v: {prefix: "2"}}`, "spec.http[0].match[0].queryParams[v]", "only exact"},
		{"uri regex", `- headers: {x-canary: {exact: "true"}}`, `- uri: {regex: "/a(?=b)"}`, "spec.http[0].match[0].uri.regex", "not a regular expression"},
		{"query regex and exact", `- headers: {x-canary: {exact: "true"}}`, `- queryParams: {v: {exact: "2", regex: "[0-9]"}}`, "spec.http[0].match[0].queryParams[v]", "mutually exclusive"},
		{"cors regex", "  - name: canary\n", "  - name: canary\n    corsPolicy: {allowOrigins: [{regex: x}]}\n", "spec.http[0].corsPolicy.allowOrigins[0].regex", "regular expressions"},
		{"delegate", "  - name: canary\n", "  - name: canary\n    delegate: {name: other}\n", "spec.http[0].delegate", "not supported"},
		{"redirect with route", "  - name: canary\n", "  - name: canary\n    redirect: {uri: /x}\n", "spec.http[0].redirect", "mutually exclusive"},
		{"retryOn", "gateway-error,", "retriable-headers,", "spec.http[1].retries.retryOn", `"retriable-headers"`},
		{"wildcard host", "hosts: [web]", `hosts: ["*.demo.svc.cluster.local"]`, "spec.hosts[0]", "wildcard"},
		{"tcp source", "  hosts: [web]\n", "  hosts: [web]\n  tcp: [{match: [{sourceSubnet: 10.0.0.0/8}], route: [{destination: {host: web}}]}]\n", "spec.tcp[0].match[0].sourceSubnet", "not supported"},
		{"tls source", "  hosts: [web]\n", "  hosts: [web]\n  tls: [{match: [{sniHosts: [web], sourceNamespace: x}], route: [{destination: {host: web}}]}]\n", "spec.tls[0].match[0].sourceNamespace", "not supported"},
		{"tls sni", "  hosts: [web]\n", "  hosts: [web]\n  tls: [{match: [{sniHosts: [a.*.com]}], route: [{destination: {host: web}}]}]\n", "spec.tls[0].match[0].sniHosts[0]", "not a server name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(webVS, tt.from, tt.to, 1)
			if doc == webVS {
				t.Fatalf("%q not in the VirtualService", tt.from)
			}
			_, err := ConvertVirtualService(istioObj[*istioapi.VirtualService](t, doc), Options{}.WithDefaults())
			if err == nil {
				t.Fatal("no error")
			}
			wantObjErr(t, err, KindIstioVirtualService, "demo", "web", tt.field)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not say %q", err, tt.msg)
			}
		})
	}
	_, err := ConvertDestinationRule(istioObj[*istioapi.DestinationRule](t, webDR+"  trafficPolicy: {tls: {mode: SIMPLE}}\n"), Options{}.WithDefaults())
	wantObjErr(t, err, KindIstioDestinationRule, "demo", "web", "spec.trafficPolicy.tls.mode")
	_, err = ConvertDestinationRule(istioObj[*istioapi.DestinationRule](t, webDR+"  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 1h}}}\n"), Options{}.WithDefaults())
	wantObjErr(t, err, KindIstioDestinationRule, "demo", "web", "spec.trafficPolicy.connectionPool.tcp.idleTimeout")
}

func TestIstioAuthorizationPolicy(t *testing.T) {
	opts := Options{}.WithDefaults()
	ap := istioObj[*istioapi.AuthorizationPolicy](t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/demo/sa/client"], ipBlocks: ["10.0.0.0/8"]}
    - source: {serviceAccounts: ["demo/other"]}
    to:
    - operation: {methods: [GET], paths: ["/api/*", "*.css"], ports: ["8080"]}
    when:
    - {key: "request.headers[x-canary]", values: ["true"]}
    - {key: source.ip, notValues: ["10.0.0.66"]}
  - from: [{source: {requestPrincipals: ["*"]}}]
`)
	a, err := ConvertIstioAuthorizationPolicy(ap, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := &configv1.Authorization{Name: "istio:web", Namespace: "demo", Scope: configv1.Authorization_WORKLOAD_SELECTOR,
		TargetRefs: []*configv1.TargetRef{{Kind: "Service", Name: "web"}},
		Rules: []*configv1.Rule{{ // the JWT rule is dropped: an ALLOW policy allows less
			From: []*configv1.Source{
				{Principals: []string{"cluster.local/ns/demo/sa/client"}, IpBlocks: []*configv1.IPBlock{{Address: []byte{10, 0, 0, 0}, Length: 8}}},
				{Principals: []string{"cluster.local/ns/demo/sa/other"}},
			},
			To: []*configv1.Operation{{Methods: []string{"GET"}, Paths: []string{"/api/*", "*.css"}, Ports: []uint32{8080}}},
			When: []*configv1.Condition{
				{Key: "request.headers[x-canary]", Values: []string{"true"}},
				{Key: "source.ip", NotValues: []string{"10.0.0.66"}},
			},
		}},
	}
	wantProto(t, "Authorization", want, a)
	// The same unsupported rule in a DENY policy denies everything.
	ap.Spec.Action = "DENY"
	a, err = ConvertIstioAuthorizationPolicy(ap, opts)
	if err != nil || len(a.Rules) != 2 || !proto.Equal(a.Rules[1], &configv1.Rule{}) {
		t.Fatalf("DENY: %v %v", a, err)
	}
	ap.Spec.Action = "CUSTOM"
	if a, _ = ConvertIstioAuthorizationPolicy(ap, opts); a.Action != configv1.Authorization_DENY || len(a.Rules) != 1 {
		t.Fatalf("CUSTOM: %v", a)
	}
	ap.Spec.Action = "ALLOW"
	ap.Spec.Rules[0].From[0].Source.IPBlocks = []string{"10.0.0.0/33"}
	_, err = ConvertIstioAuthorizationPolicy(ap, opts)
	wantObjErr(t, err, KindIstioAuthorizationPolicy, "demo", "web", "spec.rules[0].from[0].source.ipBlocks[0]")
}

func TestIstioPolicyBesideAmbits(t *testing.T) {
	ap := istioObj[*istioapi.AuthorizationPolicy](t, "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\nspec: {action: DENY, selector: {matchLabels: {app: web}}, rules: [{}]}\n")
	pa := istioObj[*istioapi.PeerAuthentication](t, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9090": {mode: PERMISSIVE}}
`)
	x := istioTestIndex(t, ambitPolicy("demo", "p"), ap, pa, pod("demo", "web-1", "node-a", "10.1.0.1", map[string]string{"app": "web"}))
	res := x.For(Proxy{Kind: KindZtunnel, Node: "node-a"})
	wl := res[configv1.WorkloadTypeURL][WorkloadUID(DefaultCluster, "demo", "web-1")].Message.(*configv1.Workload)
	if wl.TunnelProtocol != configv1.TunnelProtocol_HBONE {
		t.Fatalf("pod of an istio.io/dataplane-mode=ambient namespace not enrolled: %v", wl)
	}
	if want := []string{"demo/istio-peerauthn:web", "demo/istio:p", "demo/p"}; !slices.Equal(wl.AuthorizationPolicies, want) {
		t.Fatalf("policies %v, want %v", wl.AuthorizationPolicies, want)
	}
	if wl.PeerAuthentication != configv1.PeerAuthenticationMode_PERMISSIVE {
		t.Fatalf("mode %v: portLevelMtls makes the workload PERMISSIVE and a policy refuses plaintext", wl.PeerAuthentication)
	}
	deny := res[configv1.AuthorizationTypeURL]["demo/istio-peerauthn:web"].Message.(*configv1.Authorization)
	want := []*configv1.Rule{{From: []*configv1.Source{{NotPrincipals: []string{"*"}}}, To: []*configv1.Operation{{NotPorts: []uint32{9090}}}}}
	if deny.Action != configv1.Authorization_DENY || !slices.EqualFunc(deny.Rules, want, func(a, b *configv1.Rule) bool { return proto.Equal(a, b) }) {
		t.Fatalf("plaintext policy %v", deny)
	}
	if err := x.Delete(pa); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if _, ok := x.For(Proxy{Kind: KindZtunnel, Node: "node-a"})[configv1.AuthorizationTypeURL]["demo/istio-peerauthn:web"]; ok {
		t.Fatal("the plaintext policy outlived its PeerAuthentication")
	}
}

const policyDR = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web.demo.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 5, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 15s, maxEjectionPercent: 50, interval: 5s}
    retryBudget: {percent: 25, minRetryConcurrency: 2}
    portLevelSettings:
    - port: {number: 8080}
      connectionPool: {tcp: {maxConnections: 1}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
`

func TestDestinationRulePolicies(t *testing.T) {
	dr := istioObj[*istioapi.DestinationRule](t, policyDR)
	hostPol := &configv1.TrafficPolicy{
		LoadBalancer:     &configv1.TrafficPolicy_LoadBalancer{HashHeader: "x-user"},
		ConnectionPool:   &configv1.TrafficPolicy_ConnectionPool{MaxConnections: 10, MaxPendingRequests: 5, MaxRetries: 3, ConnectTimeout: durationOf("250ms")},
		OutlierDetection: &configv1.TrafficPolicy_OutlierDetection{Consecutive_5Xx: 2, BaseEjectionTime: durationOf("15s"), MaxEjectionPercent: 50},
		RetryBudget:      &configv1.TrafficPolicy_RetryBudget{Percent: 25, MinRetryConcurrency: 2},
	}
	hostPol.PortLevel = map[uint32]*configv1.TrafficPolicy{8080: {ConnectionPool: &configv1.TrafficPolicy_ConnectionPool{MaxConnections: 1}}}
	v2Pol := proto.Clone(hostPol).(*configv1.TrafficPolicy)
	v2Pol.LoadBalancer = &configv1.TrafficPolicy_LoadBalancer{Simple: configv1.TrafficPolicy_LoadBalancer_ROUND_ROBIN}

	// The Service alone: a route to itself with the host's policy.
	x := istioTestIndex(t, dr)
	wantProto(t, "RouteConfig of a DestinationRule alone", &configv1.RouteConfig{Hostname: "web.demo.svc.cluster.local", Namespace: "demo", Routes: []*configv1.Route{{
		Name: "demo/web", Matches: []*configv1.RouteMatch{{}}, Backends: []*configv1.Backend{{Hostname: "web.demo.svc.cluster.local", Weight: 1, Policy: hostPol}},
	}}, TcpRoutes: []*configv1.Route{{
		Name: "demo/web/tcp", Backends: []*configv1.Backend{{Hostname: "web.demo.svc.cluster.local", Weight: 1, Policy: hostPol}},
	}}}, routeConfig(x))

	// An HTTPRoute's backends get their hosts' policies (web-v1 has no DestinationRule).
	hr := webRoute()
	hr.Spec.Rules[0].BackendRefs[1].Name = "web"
	if err := x.Upsert(hr); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	bs := routeConfig(x).Routes[0].Backends
	if bs[0].Policy != nil || !proto.Equal(bs[1].Policy, hostPol) {
		t.Fatalf("HTTPRoute backends %v", bs)
	}

	// A VirtualService's subsets get the subset's policy merged over the host's.
	if err := x.Upsert(istioObj[*istioapi.VirtualService](t, webVS)); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	split := routeConfig(x).Routes[1]
	wantProto(t, "v1", hostPol, split.Backends[0].Policy)
	wantProto(t, "v2", v2Pol, split.Backends[1].Policy)

	// Deleting the DestinationRule takes the policies away (and the subsets: last good kept).
	if err := x.Delete(dr); err != nil {
		t.Fatal(err)
	}
	x.Commit()
	if len(x.Errors()) != 1 {
		t.Fatalf("errors %v; want the VirtualService's subsets reported", x.Errors())
	}
}

func TestVirtualServiceL7(t *testing.T) {
	vs := istioObj[*istioapi.VirtualService](t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: www.example.com, redirectCode: 308}
  - name: grpc-fault
    match: [{headers: {x-fault: {exact: "1"}}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}}
    route: [{destination: {host: web}}]
  - name: gone
    match: [{uri: {exact: /gone}}]
    directResponse: {status: 410, body: {string: "gone for good"}}
  - name: api
    match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /api/, authority: api.internal}
    headers:
      request: {set: {x-env: prod}, remove: [x-debug]}
      response: {add: {x-served-by: waypoint}}
    route: [{destination: {host: web, subset: v1}, headers: {request: {set: {x-subset: v1}}}}]
    mirror: {host: web, subset: v2}
    mirrorPercentage: {value: 12.5}
    corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}, {prefix: "https://dev-"}]
      allowMethods: [GET]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
`)
	x := istioTestIndex(t, istioObj[*istioapi.DestinationRule](t, webDR), vs)
	rc := routeConfig(x)
	if rc == nil || len(rc.Routes) != 4 {
		t.Fatalf("RouteConfig %v (errors %v)", rc, x.Errors())
	}
	wantProto(t, "redirect", &configv1.Route{Name: "moved", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_Exact{Exact: "/old"}}}},
		Redirect: &configv1.Redirect{Path: "/new", Authority: "www.example.com", Code: 308}}, rc.Routes[0])
	wantProto(t, "gRPC abort", &configv1.Fault{Abort: &configv1.Fault_Abort{Percentage: 50, Grpc: true, GrpcStatus: 14}}, rc.Routes[1].Fault)
	wantProto(t, "direct", &configv1.DirectResponse{Status: 410, Body: []byte("gone for good")}, rc.Routes[2].DirectResponse)
	wantProto(t, "api", &configv1.Route{Name: "api", Matches: []*configv1.RouteMatch{{Path: &configv1.PathMatch{Kind: &configv1.PathMatch_StringPrefix{StringPrefix: "/v1/"}}}},
		Backends: []*configv1.Backend{{Hostname: "web.demo.svc.cluster.local", Weight: 100, Subset: map[string]string{"version": "v1"}, SubsetName: "v1",
			RequestHeaders: &configv1.HeaderOps{Set: map[string]string{"x-subset": "v1"}}}},
		Rewrite:         &configv1.Rewrite{Path: "/api/", Authority: "api.internal"},
		RequestHeaders:  &configv1.HeaderOps{Set: map[string]string{"x-env": "prod"}, Remove: []string{"x-debug"}},
		ResponseHeaders: &configv1.HeaderOps{Add: map[string]string{"x-served-by": "waypoint"}},
		Mirrors:         []*configv1.Mirror{{Hostname: "web.demo.svc.cluster.local", Percentage: 12.5, Subset: map[string]string{"version": "v2"}, SubsetName: "v2"}},
		Cors: &configv1.CorsPolicy{AllowOriginsExact: []string{"https://app.example.com"}, AllowOriginsPrefix: []string{"https://dev-"},
			AllowMethods: []string{"GET"}, MaxAge: durationOf("24h"), AllowCredentials: true, IgnoreUnmatchedPreflights: true},
	}, rc.Routes[3])
}

// TestNoRouteNoRouteConfig: a Service without routes or a DestinationRule policy has no
// RouteConfig (an empty one would answer 404 to everything).
func TestNoRouteNoRouteConfig(t *testing.T) {
	x := istioTestIndex(t, istioObj[*istioapi.DestinationRule](t, webDR))
	if rc := routeConfig(x); rc != nil {
		t.Fatalf("RouteConfig %v for a Service without routes", rc)
	}
	if _, ok := x.For(Proxy{Kind: KindWaypoint, Namespace: "demo", Name: "wp"})[configv1.RouteConfigTypeURL][webRC]; ok {
		t.Fatal("a RouteConfig resource exists")
	}
}

func TestVirtualServiceTCP(t *testing.T) {
	vs := istioObj[*istioapi.VirtualService](t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  tls:
  - match: [{port: 443, sniHosts: [db.example.com, "*.db.example.com"]}]
    route: [{destination: {host: web, subset: v2}}]
  tcp:
  - match: [{port: 5432}]
    route:
    - {destination: {host: web, subset: v1}, weight: 80}
    - {destination: {host: web, subset: v2}, weight: 20}
`)
	x := istioTestIndex(t, istioObj[*istioapi.DestinationRule](t, webDR+"  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}\n"), vs)
	rc := routeConfig(x)
	if rc == nil || len(rc.Routes) != 0 || len(rc.TcpRoutes) != 2 {
		t.Fatalf("RouteConfig %v (errors %v)", rc, x.Errors())
	}
	pol := &configv1.TrafficPolicy{ConnectionPool: &configv1.TrafficPolicy_ConnectionPool{MaxConnections: 7}}
	wantProto(t, "tcp route", &configv1.Route{Name: "demo/web/tcp/0", Ports: []uint32{5432}, Backends: []*configv1.Backend{
		{Hostname: "web.demo.svc.cluster.local", Weight: 80, Subset: map[string]string{"version": "v1"}, SubsetName: "v1", Policy: pol},
		{Hostname: "web.demo.svc.cluster.local", Weight: 20, Subset: map[string]string{"version": "v2"}, SubsetName: "v2", Policy: pol},
	}}, rc.TcpRoutes[1])
	wantProto(t, "tls route", &configv1.Route{Name: "demo/web/tls/0", Ports: []uint32{443}, SniHosts: []string{"db.example.com", "*.db.example.com"}, Backends: []*configv1.Backend{
		{Hostname: "web.demo.svc.cluster.local", Weight: 100, Subset: map[string]string{"version": "v2"}, SubsetName: "v2", Policy: pol},
	}}, rc.TcpRoutes[0])
}

func TestIstioWaypointForLabel(t *testing.T) {
	gw := waypointGW("demo", "wp", "", "10.0.0.9")
	gw.Labels = map[string]string{LabelIstioWaypointFor: "service"}
	wp, ok, err := ConvertGateway(gw, "cluster.local")
	if err != nil || !ok || wp.For != configv1.Waypoint_SERVICE {
		t.Fatalf("istio.io/waypoint-for: %v %v %v", wp, ok, err)
	}
	gw.Labels[LabelWaypointFor] = "namespace" // ambit's label wins
	if wp, _, _ = ConvertGateway(gw, "cluster.local"); wp.For != configv1.Waypoint_NAMESPACE {
		t.Fatalf("both labels: %v", wp.For)
	}
}
