// Package istioapi holds Go types for the Istio resources ambit reads as Istio reads them:
// networking.istio.io VirtualService and DestinationRule (v1alpha3, v1beta1, v1) and
// security.istio.io AuthorizationPolicy and PeerAuthentication (v1beta1, v1).
//
// The types carry Istio's schema, field for field and with Istio's JSON names, rather than
// importing istio.io/client-go: that module decodes its specs with a protobuf JSON decoder set
// to allow unknown fields, so "a field Istio does not have" would pass silently, and it drags
// in the deprecated github.com/golang/protobuf and a second structured-merge-diff. Here a
// strict decoder rejects an unknown field by its path, and the model refuses, by name, the
// fields Istio has that ambit does not implement. Fields ambit never reads the inside of are
// kept as raw JSON.
//
// The versions of a kind share one schema (Istio serves them all from one CRD), so each kind
// is one Go type registered under every version.
//
// Where ambit's own security.ambit.dev types (modelled on Istio's) have the same JSON shape,
// the Istio types reuse them: aliased when the shapes are equal, embedded (inline in JSON)
// when Istio's adds fields. TestIstioFieldNames pins Istio's field names, so that a field
// added to ambit's types cannot slip into Istio's schema unnoticed.
package istioapi

import (
	"encoding/json"

	secv1 "ambit.dev/controller/apis/security/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VirtualService: networking.istio.io.
type VirtualService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              VirtualServiceSpec `json:"spec,omitempty"`
	Status            *IstioStatus       `json:"status,omitempty"`
}

// VirtualServiceList is a list of VirtualServices.
type VirtualServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualService `json:"items"`
}

type VirtualServiceSpec struct {
	Hosts    []string    `json:"hosts,omitempty"`
	Gateways []string    `json:"gateways,omitempty"`
	HTTP     []HTTPRoute `json:"http,omitempty"`
	TLS      []TLSRoute  `json:"tls,omitempty"`
	TCP      []TCPRoute  `json:"tcp,omitempty"`
	ExportTo []string    `json:"exportTo,omitempty"`
}

type TLSRoute struct {
	Match []TLSMatchAttributes `json:"match"`
	Route []RouteDestination   `json:"route,omitempty"`
}

type TLSMatchAttributes struct {
	SniHosts           []string          `json:"sniHosts"`
	DestinationSubnets []string          `json:"destinationSubnets,omitempty"`
	Port               uint32            `json:"port,omitempty"`
	SourceLabels       map[string]string `json:"sourceLabels,omitempty"`
	Gateways           []string          `json:"gateways,omitempty"`
	SourceNamespace    string            `json:"sourceNamespace,omitempty"`
}

type TCPRoute struct {
	Match []L4MatchAttributes `json:"match,omitempty"`
	Route []RouteDestination  `json:"route,omitempty"`
}

type L4MatchAttributes struct {
	DestinationSubnets []string          `json:"destinationSubnets,omitempty"`
	Port               uint32            `json:"port,omitempty"`
	SourceSubnet       string            `json:"sourceSubnet,omitempty"`
	SourceLabels       map[string]string `json:"sourceLabels,omitempty"`
	Gateways           []string          `json:"gateways,omitempty"`
	SourceNamespace    string            `json:"sourceNamespace,omitempty"`
}

type RouteDestination struct {
	Destination Destination `json:"destination"`
	Weight      int32       `json:"weight,omitempty"`
}

type HTTPRoute struct {
	Name             string                 `json:"name,omitempty"`
	Match            []HTTPMatchRequest     `json:"match,omitempty"`
	Route            []HTTPRouteDestination `json:"route,omitempty"`
	Redirect         *HTTPRedirect          `json:"redirect,omitempty"`
	DirectResponse   *HTTPDirectResponse    `json:"directResponse,omitempty"`
	Delegate         json.RawMessage        `json:"delegate,omitempty"`
	Rewrite          *HTTPRewrite           `json:"rewrite,omitempty"`
	Timeout          string                 `json:"timeout,omitempty"`
	Retries          *HTTPRetry             `json:"retries,omitempty"`
	Fault            *HTTPFaultInjection    `json:"fault,omitempty"`
	Mirror           *Destination           `json:"mirror,omitempty"`
	Mirrors          []HTTPMirrorPolicy     `json:"mirrors,omitempty"`
	MirrorPercent    *uint32                `json:"mirrorPercent,omitempty"`
	MirrorPercentage *Percent               `json:"mirrorPercentage,omitempty"`
	CorsPolicy       *CorsPolicy            `json:"corsPolicy,omitempty"`
	Headers          *Headers               `json:"headers,omitempty"`
}

type HTTPMatchRequest struct {
	Name            string                 `json:"name,omitempty"`
	URI             *StringMatch           `json:"uri,omitempty"`
	Scheme          *StringMatch           `json:"scheme,omitempty"`
	Method          *StringMatch           `json:"method,omitempty"`
	Authority       *StringMatch           `json:"authority,omitempty"`
	Headers         map[string]StringMatch `json:"headers,omitempty"`
	Port            uint32                 `json:"port,omitempty"`
	SourceLabels    map[string]string      `json:"sourceLabels,omitempty"`
	Gateways        []string               `json:"gateways,omitempty"`
	QueryParams     map[string]StringMatch `json:"queryParams,omitempty"`
	IgnoreURICase   bool                   `json:"ignoreUriCase,omitempty"`
	WithoutHeaders  map[string]StringMatch `json:"withoutHeaders,omitempty"`
	SourceNamespace string                 `json:"sourceNamespace,omitempty"`
	StatPrefix      string                 `json:"statPrefix,omitempty"`
}

// StringMatch is one of exact, prefix, regex.
type StringMatch struct {
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Regex  string `json:"regex,omitempty"`
}

type HTTPRouteDestination struct {
	Destination Destination `json:"destination"`
	Weight      int32       `json:"weight,omitempty"`
	Headers     *Headers    `json:"headers,omitempty"`
}

type Destination struct {
	Host   string        `json:"host"`
	Subset string        `json:"subset,omitempty"`
	Port   *PortSelector `json:"port,omitempty"`
}

type PortSelector struct {
	Number uint32 `json:"number,omitempty"`
}

type Percent struct {
	Value float64 `json:"value,omitempty"`
}

type Headers struct {
	Request  *HeaderOperations `json:"request,omitempty"`
	Response *HeaderOperations `json:"response,omitempty"`
}

type HeaderOperations struct {
	Set    map[string]string `json:"set,omitempty"`
	Add    map[string]string `json:"add,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

type HTTPRedirect struct {
	URI           string `json:"uri,omitempty"`
	Authority     string `json:"authority,omitempty"`
	Port          uint32 `json:"port,omitempty"`
	DerivePort    string `json:"derivePort,omitempty"`
	Scheme        string `json:"scheme,omitempty"`
	RedirectCode  uint32 `json:"redirectCode,omitempty"`
	PrefixRewrite string `json:"prefixRewrite,omitempty"`
}

type CorsPolicy struct {
	AllowOrigin         []string      `json:"allowOrigin,omitempty"`
	AllowOrigins        []StringMatch `json:"allowOrigins,omitempty"`
	AllowMethods        []string      `json:"allowMethods,omitempty"`
	AllowHeaders        []string      `json:"allowHeaders,omitempty"`
	ExposeHeaders       []string      `json:"exposeHeaders,omitempty"`
	MaxAge              string        `json:"maxAge,omitempty"`
	AllowCredentials    *bool         `json:"allowCredentials,omitempty"`
	UnmatchedPreflights string        `json:"unmatchedPreflights,omitempty"`
}

type HTTPDirectResponse struct {
	Status uint32    `json:"status"`
	Body   *HTTPBody `json:"body,omitempty"`
}

// HTTPBody is one of string, bytes (base64 in JSON).
type HTTPBody struct {
	String string `json:"string,omitempty"`
	Bytes  []byte `json:"bytes,omitempty"`
}

type HTTPRewrite struct {
	URI             string          `json:"uri,omitempty"`
	Authority       string          `json:"authority,omitempty"`
	URIRegexRewrite json.RawMessage `json:"uriRegexRewrite,omitempty"`
}

type HTTPRetry struct {
	Attempts                 int32  `json:"attempts,omitempty"`
	PerTryTimeout            string `json:"perTryTimeout,omitempty"`
	RetryOn                  string `json:"retryOn,omitempty"`
	RetryRemoteLocalities    *bool  `json:"retryRemoteLocalities,omitempty"`
	RetryIgnorePreviousHosts *bool  `json:"retryIgnorePreviousHosts,omitempty"`
	Backoff                  string `json:"backoff,omitempty"`
}

type HTTPFaultInjection struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

type FaultDelay struct {
	Percent          int32    `json:"percent,omitempty"`
	Percentage       *Percent `json:"percentage,omitempty"`
	FixedDelay       string   `json:"fixedDelay,omitempty"`
	ExponentialDelay string   `json:"exponentialDelay,omitempty"`
}

type FaultAbort struct {
	HTTPStatus int32    `json:"httpStatus,omitempty"`
	GRPCStatus string   `json:"grpcStatus,omitempty"`
	HTTP2Error string   `json:"http2Error,omitempty"`
	Percentage *Percent `json:"percentage,omitempty"`
}

type HTTPMirrorPolicy struct {
	Destination Destination `json:"destination"`
	Percentage  *Percent    `json:"percentage,omitempty"`
}

// DestinationRule: networking.istio.io.
type DestinationRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              DestinationRuleSpec `json:"spec,omitempty"`
	Status            *IstioStatus        `json:"status,omitempty"`
}

// DestinationRuleList is a list of DestinationRules.
type DestinationRuleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DestinationRule `json:"items"`
}

type DestinationRuleSpec struct {
	Host             string            `json:"host"`
	TrafficPolicy    *TrafficPolicy    `json:"trafficPolicy,omitempty"`
	Subsets          []Subset          `json:"subsets,omitempty"`
	ExportTo         []string          `json:"exportTo,omitempty"`
	WorkloadSelector *WorkloadSelector `json:"workloadSelector,omitempty"`
}

type Subset struct {
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	TrafficPolicy *TrafficPolicy    `json:"trafficPolicy,omitempty"`
}

type TrafficPolicy struct {
	PortSettings
	PortLevelSettings []PortTrafficPolicy `json:"portLevelSettings,omitempty"`
	Tunnel            json.RawMessage     `json:"tunnel,omitempty"`
	ProxyProtocol     json.RawMessage     `json:"proxyProtocol,omitempty"`
	RetryBudget       *RetryBudget        `json:"retryBudget,omitempty"`
}

type PortTrafficPolicy struct {
	Port *PortSelector `json:"port,omitempty"`
	PortSettings
}

// PortSettings are the parts of a trafficPolicy that a portLevelSettings entry may also set.
type PortSettings struct {
	LoadBalancer     *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool   *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection       `json:"outlierDetection,omitempty"`
	TLS              json.RawMessage         `json:"tls,omitempty"`
}

type LoadBalancerSettings struct {
	Simple             string          `json:"simple,omitempty"`
	ConsistentHash     *ConsistentHash `json:"consistentHash,omitempty"`
	LocalityLbSetting  json.RawMessage `json:"localityLbSetting,omitempty"`
	ZoneAwareLbSetting json.RawMessage `json:"zoneAwareLbSetting,omitempty"`
	WarmupDurationSecs string          `json:"warmupDurationSecs,omitempty"`
	Warmup             json.RawMessage `json:"warmup,omitempty"`
}

type ConsistentHash struct {
	HTTPHeaderName         string          `json:"httpHeaderName,omitempty"`
	HTTPCookie             json.RawMessage `json:"httpCookie,omitempty"`
	UseSourceIP            bool            `json:"useSourceIp,omitempty"`
	HTTPQueryParameterName string          `json:"httpQueryParameterName,omitempty"`
	RingHash               json.RawMessage `json:"ringHash,omitempty"`
	Maglev                 json.RawMessage `json:"maglev,omitempty"`
	MinimumRingSize        uint64          `json:"minimumRingSize,omitempty"`
}

type ConnectionPoolSettings struct {
	TCP  *TCPSettings  `json:"tcp,omitempty"`
	HTTP *HTTPSettings `json:"http,omitempty"`
}

type TCPSettings struct {
	MaxConnections        int32           `json:"maxConnections,omitempty"`
	ConnectTimeout        string          `json:"connectTimeout,omitempty"`
	TCPKeepalive          json.RawMessage `json:"tcpKeepalive,omitempty"`
	MaxConnectionDuration string          `json:"maxConnectionDuration,omitempty"`
	IdleTimeout           string          `json:"idleTimeout,omitempty"`
}

type HTTPSettings struct {
	HTTP1MaxPendingRequests  int32           `json:"http1MaxPendingRequests,omitempty"`
	HTTP2MaxRequests         int32           `json:"http2MaxRequests,omitempty"`
	MaxRequestsPerConnection int32           `json:"maxRequestsPerConnection,omitempty"`
	MaxRetries               int32           `json:"maxRetries,omitempty"`
	IdleTimeout              string          `json:"idleTimeout,omitempty"`
	H2UpgradePolicy          string          `json:"h2UpgradePolicy,omitempty"`
	UseClientProtocol        bool            `json:"useClientProtocol,omitempty"`
	MaxConcurrentStreams     int32           `json:"maxConcurrentStreams,omitempty"`
	HTTP2KeepAlive           json.RawMessage `json:"http2KeepAlive,omitempty"`
}

type OutlierDetection struct {
	ConsecutiveErrors              int32    `json:"consecutiveErrors,omitempty"`
	SplitExternalLocalOriginErrors bool     `json:"splitExternalLocalOriginErrors,omitempty"`
	ConsecutiveLocalOriginFailures *uint32  `json:"consecutiveLocalOriginFailures,omitempty"`
	ConsecutiveGatewayErrors       *uint32  `json:"consecutiveGatewayErrors,omitempty"`
	Consecutive5xxErrors           *uint32  `json:"consecutive5xxErrors,omitempty"`
	Interval                       string   `json:"interval,omitempty"`
	BaseEjectionTime               string   `json:"baseEjectionTime,omitempty"`
	MaxEjectionPercent             int32    `json:"maxEjectionPercent,omitempty"`
	MinHealthPercent               int32    `json:"minHealthPercent,omitempty"`
	OutlierDetectionHTTPErrorCodes []uint32 `json:"outlierDetectionHttpErrorCodes,omitempty"`
}

type RetryBudget struct {
	Percent             *float64 `json:"percent,omitempty"`
	MinRetryConcurrency uint32   `json:"minRetryConcurrency,omitempty"`
	BudgetInterval      string   `json:"budgetInterval,omitempty"`
}

// WorkloadSelector is ambit's: matchLabels.
type WorkloadSelector = secv1.WorkloadSelector

// PolicyTargetReference is ambit's (group, kind, name) and a namespace.
type PolicyTargetReference struct {
	secv1.PolicyTargetReference
	Namespace string `json:"namespace,omitempty"`
}

// AuthorizationPolicy: security.istio.io.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AuthorizationPolicySpec `json:"spec,omitempty"`
	Status            *IstioStatus            `json:"status,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicies.
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}

type AuthorizationPolicySpec struct {
	Selector   *WorkloadSelector       `json:"selector,omitempty"`
	TargetRef  *PolicyTargetReference  `json:"targetRef,omitempty"`
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	Rules      []Rule                  `json:"rules,omitempty"`
	Action     string                  `json:"action,omitempty"`
	Provider   json.RawMessage         `json:"provider,omitempty"`
}

type Rule struct {
	From []RuleFrom  `json:"from,omitempty"`
	To   []RuleTo    `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

type RuleFrom struct {
	Source *Source `json:"source,omitempty"`
}

type RuleTo struct {
	Operation *Operation `json:"operation,omitempty"`
}

// Source is ambit's (principals, namespaces, ipBlocks and their nots) and what Istio adds.
type Source struct {
	secv1.Source
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	ServiceAccounts      []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts   []string `json:"notServiceAccounts,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
	TrustDomains         []string `json:"trustDomains,omitempty"`
	NotTrustDomains      []string `json:"notTrustDomains,omitempty"`
}

// Operation is ambit's (ports, methods, paths and their nots) and hosts.
type Operation struct {
	secv1.Operation
	Hosts    []string `json:"hosts,omitempty"`
	NotHosts []string `json:"notHosts,omitempty"`
}

type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// PeerAuthentication: security.istio.io.
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PeerAuthenticationSpec `json:"spec,omitempty"`
	Status            *IstioStatus           `json:"status,omitempty"`
}

// PeerAuthenticationList is a list of PeerAuthentications.
type PeerAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PeerAuthentication `json:"items"`
}

type PeerAuthenticationSpec struct {
	Selector      *WorkloadSelector    `json:"selector,omitempty"`
	MTLS          *MutualTLS           `json:"mtls,omitempty"`
	PortLevelMTLS map[string]MutualTLS `json:"portLevelMtls,omitempty"`
}

// MutualTLS is ambit's: mode.
type MutualTLS = secv1.MTLS
