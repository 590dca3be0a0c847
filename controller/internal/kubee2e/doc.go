// Package kubee2e holds the end-to-end tests of ambit on a real Kubernetes cluster
// (clustertest): `ambitctl install`, `check`, enrolment of real pods on real kubelets, HBONE
// between them with the caller's identity, an L4 policy, and `ambitctl uninstall` leaving no
// rule and no CNI config behind. They need root and the images of `make images`.
package kubee2e
