// Package cav1 is the controller's certificate authority API: the CertificateService gRPC
// service and its messages, generated from ca.proto (make proto), whose comments are the
// reference for every field.
package cav1
