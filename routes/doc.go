// Package routes owns the immutable route table: compiled routes, their
// upstreams and per-route settings, and [Table.Match], which picks the
// route for a request without allocating.
//
// It is plain Go with no I/O and imports only the standard library; the
// config package builds tables, the proxy package reads them.
package routes
