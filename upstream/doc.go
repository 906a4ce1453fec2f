// Package upstream owns the backends a route forwards to: the targets of
// each upstream and their live state, the choice of a target for a
// request, and failover from one target to the next.
//
// A [Set] is one upstream of one loaded config. Its targets carry their
// state (open WebSocket sessions, requests in flight) in atomics, so the
// request path reads and updates it without locks. HTTP forwarding and
// the WebSocket handshake both walk a Set with an [Attempt]: Next gives a
// target, Failed reports a try that went wrong and says whether to try
// another one.
//
// It must not import the proxy, config or routes packages: the proxy
// package uses it, and config compiles a [Config] for it.
package upstream
