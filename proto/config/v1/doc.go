// Package configv1 holds the configuration resources that the controller pushes to ztunnels
// and waypoints over delta xDS: Workload, Service, Authorization, Waypoint and RouteConfig.
//
// The types are generated from config.proto (make proto); that file's comments are the
// reference for every field. This package adds only the xDS type URLs.
package configv1
