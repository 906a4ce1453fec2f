// Package admin is wsgate's admin HTTP API and live dashboard: an
// [http.Handler] for its own listener, with the probes (/healthz,
// /readyz), /metrics, the session API (list, inspect, close, send to one
// session, broadcast to a route), the upstream status, the running
// config, /reload, the overview and its Server-Sent Events stream, and
// the dashboard page that reads that stream.
//
// It owns the HTTP layer only: paths, methods, bearer-token
// authentication, input validation, status codes and JSON bodies. What
// it shows and does comes from the functions and the [Sessions] given in
// [Options]; the caller (cmd/wsgate) owns the listener, the http.Server
// and their lifecycle. It starts no goroutine of its own: each stream
// runs on its request's goroutine and ends with the request, or when
// its server shuts down.
//
// Files: admin.go (options, routing, authentication, errors),
// sessions.go (the session and broadcast endpoints and their input
// checks), stream.go (the overview stream), dashboard.go with
// dashboard.html (the page, one self-contained file embedded at build
// time: no CDN, no build step).
//
// It uses net/http from the standard library and reads the types of
// wsrelay and upstream. It must not import fasthttp, gopkg.in/yaml.v3,
// config or proxy.
package admin
