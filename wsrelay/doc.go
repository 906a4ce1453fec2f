// Package wsrelay relays WebSocket frames between a client and a backend
// connection once both handshakes are done: the frame codec, sessions and
// their two legs, the frame reader, and the session registry (list, close
// or message one session, broadcast, drain), with live per-session
// counters that the admin API and the metrics read while sessions run.
//
// It gets two net.Conns and settings. It must not import fasthttp,
// gopkg.in/yaml.v3, config, routes, upstream or proxy: what it knows of a
// route or a target is a name and an address.
package wsrelay
