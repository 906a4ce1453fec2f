// Package kubernetes holds the Kubernetes manifests of wsgate and their
// tests, in a module of its own so that k8s.io never enters wsgate's
// go.mod.
package kubernetes
