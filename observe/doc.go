// Package observe exposes wsgate's numbers in the Prometheus text format.
// It is the only importer of the Prometheus client library: the request
// path and the relay count with their own atomics, and a collector here
// reads them at scrape time ([Sources]), so a scrape costs the traffic
// nothing and an unscraped process pays for no metric objects.
//
// Label values are bounded by the config: route and upstream names,
// target addresses (from the config or DNS discovery), certificate files;
// never request paths, Host headers or client addresses.
package observe
