// Package proxy is wsgate's request handler: it matches a request to a
// route, forwards plain HTTP through pooled upstream connections with
// streamed bodies, performs the WebSocket handshake on both sides (the
// backend first), relays frames between the two connections and drains
// every session with close 1001 on shutdown.
//
// It never sees YAML, file paths or flags: it takes a [routes.Table] and
// [Options]. It must not import gopkg.in/yaml.v3 or the config package.
package proxy
