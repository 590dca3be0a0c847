package configv1

// The xDS type URLs of the resources, as carried in DeltaDiscoveryRequest.type_url and in the
// google.protobuf.Any of each resource.
const (
	WorkloadTypeURL      = "type.googleapis.com/ambit.config.v1.Workload"
	ServiceTypeURL       = "type.googleapis.com/ambit.config.v1.Service"
	AuthorizationTypeURL = "type.googleapis.com/ambit.config.v1.Authorization"
	WaypointTypeURL      = "type.googleapis.com/ambit.config.v1.Waypoint"
	RouteConfigTypeURL   = "type.googleapis.com/ambit.config.v1.RouteConfig"
)

// TypeURLs lists every resource type in the order a proxy should apply a batch of them:
// the resources others refer to come first.
var TypeURLs = []string{
	WaypointTypeURL,
	ServiceTypeURL,
	AuthorizationTypeURL,
	WorkloadTypeURL,
	RouteConfigTypeURL,
}
