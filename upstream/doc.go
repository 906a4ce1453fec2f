// Package upstream owns the backends a route forwards to: the targets of
// each upstream and their live state, the choice of a target for each
// request, failover, health and discovery.
//
// A [Set] is one upstream of one loaded config. Its targets carry their
// state (open WebSocket sessions, requests in flight, health, ejection)
// in atomics, keyed by URL, so that the set of the next config can keep
// it ([Options.Previous]). HTTP forwarding and the WebSocket handshake
// both walk a Set with an [Attempt]: [Attempt.Next] picks a target by the
// upstream's [Policy], [Attempt.Failed] reports a try that went wrong and
// says whether another target may be tried, [Attempt.Responded] reports
// an answer. The request path reads one atomic pointer (the table of
// targets) and allocates nothing.
//
// Files: policy.go (round robin schedule, rendezvous hashing, sticky
// cookie values), attempt.go (picking and failover), passive.go
// (ejection), health.go and wscheck.go (active HTTP and WebSocket
// checks), resolve.go (DNS discovery).
//
// A Set owns its goroutines (a health checker per target, the ejector,
// the resolver): [Set.Start] starts them and [Set.Close] stops them and
// waits for them.
//
// It must not import the proxy, config or routes packages, nor fasthttp:
// the proxy package uses it and attaches its HTTP clients to targets
// ([Target.Attached]); config compiles a [Config] for it.
package upstream
