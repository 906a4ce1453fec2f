package upstream

import (
	"crypto/tls"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"
)

// Config is the compiled configuration of one upstream. The config
// package builds it and fills in every default; it is immutable once a
// [Set] uses it.
type Config struct {
	// Name is the key of the upstream in the YAML upstreams map.
	Name string
	// Targets are the backend servers, in file order.
	Targets []TargetConfig
	// TLS is the client configuration for https targets; nil when every
	// target is plain http.
	TLS *tls.Config
	// ConnectTimeout bounds the TCP connect to a target.
	ConnectTimeout time.Duration
	// ResponseTimeout bounds the wait for the response head, and each
	// later silence while reading the response body.
	ResponseTimeout time.Duration
	// MaxConnections caps what one target carries at once: open
	// WebSocket sessions plus HTTP requests in flight. A target at the
	// cap is skipped. 0 means no cap.
	MaxConnections int

	// Policy chooses a target for each request.
	Policy Policy
	// Key is what the Hash policy hashes; the Cookie policy reads its
	// cookie through it too (KeyCookie with Sticky.Cookie).
	Key Key
	// Sticky configures the Cookie policy.
	Sticky Sticky

	// Health configures active checks; nil means none (every target is
	// taken as healthy).
	Health *Health
	// Passive configures ejection on failed requests; nil means none.
	Passive *Passive

	// Retries is how many other targets a request may be tried on after
	// the first (see [Attempt.Failed] for when it may).
	Retries int
	// TryTimeout is the time after which no new try starts; 0 means no
	// limit (the config package always sets one).
	TryTimeout time.Duration
	// RetryBodyLimit is the largest request body that is buffered, so
	// that an idempotent request can be sent again after its connection
	// broke; larger and chunked bodies are streamed and never resent.
	RetryBodyLimit int64

	// ResolveEvery, when positive, resolves target host names that often
	// and makes each A/AAAA address a target (DNS discovery).
	ResolveEvery time.Duration
	// Resolvers are DNS servers (host:port) used instead of the system's
	// for discovery; empty means the system resolver.
	Resolvers []string

	// OnTargetRemoved is what a reload does to the open WebSocket
	// sessions of a target that left the upstream: "drain", "keep" or
	// "close" (the proxy package acts on it).
	OnTargetRemoved string
	// TLSSource identifies what TLS was built from (CA file contents,
	// server name, verification), so that a reload can tell whether a
	// target's pooled connections may be kept.
	TLSSource string
}

// TargetConfig is one backend server as written in the config.
type TargetConfig struct {
	// Scheme is "http" or "https".
	Scheme string
	// Host is the lower-case host name or IP address, without brackets.
	Host string
	// Port is the port, with the scheme's default filled in.
	Port string
	// Weight is the target's share relative to the others, 1 to 256.
	Weight int
}

// Addr returns host:port.
func (c TargetConfig) Addr() string { return net.JoinHostPort(c.Host, c.Port) }

// URL returns scheme://host:port, the target's identity.
func (c TargetConfig) URL() string { return c.Scheme + "://" + c.Addr() }

// MaxWeight is the largest target weight (HAProxy's limit too).
const MaxWeight = 256

// Policy is a balancing policy.
type Policy uint8

// The balancing policies.
const (
	// RoundRobin takes healthy targets in turn, in proportion to their
	// weights (smooth weighted round robin, as nginx).
	RoundRobin Policy = iota
	// LeastConn takes the target with the fewest open WebSocket sessions
	// plus HTTP requests in flight, relative to its weight; ties go to a
	// random one of the tied targets.
	LeastConn
	// Random takes the less loaded of two targets picked at random
	// (power of two random choices), by the same count.
	Random
	// Hash sends each value of Key to the same target: rendezvous (highest
	// random weight) hashing with a fixed hash function (see hrwScore), so
	// that replicas with the same targets agree and removing a target
	// moves only its keys. Requests without the key go round robin.
	Hash
	// Cookie pins a client to a target with a cookie set on its first
	// response (an HTTP answer or a handshake's 101).
	Cookie
)

var policyNames = [...]string{"round_robin", "least_conn", "random", "hash", "cookie"}

// String returns the policy's config name.
func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return fmt.Sprintf("Policy(%d)", p)
}

// ParsePolicy returns the policy with the given config name.
func ParsePolicy(s string) (Policy, error) {
	for i, n := range policyNames {
		if s == n {
			return Policy(i), nil
		}
	}
	return 0, fmt.Errorf("unknown policy %q (want %s)", s, strings.Join(policyNames[:], ", "))
}

// KeyKind says where a request's balancing key comes from.
type KeyKind uint8

// The kinds of key.
const (
	KeyNone     KeyKind = iota
	KeyClientIP         // the client's address (see the proxy's trusted_proxies)
	KeyHeader           // a request header
	KeyCookie           // a request cookie
	KeyQuery            // a query parameter
)

// Key names a request's balancing key.
type Key struct {
	Kind KeyKind
	// Name is the header, cookie or query parameter name.
	Name string
}

// String returns the key as written in the config.
func (k Key) String() string {
	switch k.Kind {
	case KeyClientIP:
		return "client_ip"
	case KeyHeader:
		return "header:" + k.Name
	case KeyCookie:
		return "cookie:" + k.Name
	case KeyQuery:
		return "query:" + k.Name
	}
	return ""
}

// ParseKey parses "client_ip", "header:NAME", "cookie:NAME" or
// "query:NAME".
func ParseKey(s string) (Key, error) {
	if s == "client_ip" {
		return Key{Kind: KeyClientIP}, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	if ok && name != "" {
		switch kind {
		case "header":
			return Key{Kind: KeyHeader, Name: name}, nil
		case "cookie":
			return Key{Kind: KeyCookie, Name: name}, nil
		case "query":
			return Key{Kind: KeyQuery, Name: name}, nil
		}
	}
	return Key{}, fmt.Errorf("invalid key %q (want client_ip, header:NAME, cookie:NAME or query:NAME)", s)
}

// Sticky configures the Cookie policy.
type Sticky struct {
	// Cookie is the cookie's name.
	Cookie string
	// Secret keys the hash that names a target in the cookie, so that
	// the value does not reveal the target's address. Replicas that
	// share it agree on cookies.
	Secret string
}

// Health configures active health checks.
type Health struct {
	// Path is the request path of the HTTP check; "" means no HTTP check.
	Path string
	// Interval is the time between two checks of a target.
	Interval time.Duration
	// Timeout bounds one check (HTTP and WebSocket each).
	Timeout time.Duration
	// Expect lists the statuses an HTTP check accepts.
	Expect []StatusRange
	// HealthyAfter passes in a row bring an unhealthy target back.
	HealthyAfter int
	// UnhealthyAfter failures in a row take a target out.
	UnhealthyAfter int
	// StartUnhealthy keeps a target the set has not seen before (at
	// start, added by a reload, or discovered) out of rotation until its
	// first check passes.
	StartUnhealthy bool
	// Headers are sent with every check (a Host here replaces the
	// target's host).
	Headers []Header
	// WebSocket configures a WebSocket check; nil means none.
	WebSocket *WebSocketCheck
}

// StatusRange is an inclusive range of HTTP statuses.
type StatusRange struct{ Min, Max int }

// Header is one name/value pair.
type Header struct{ Name, Value string }

// WebSocketCheck is a real WebSocket conversation with the target: an
// upgrade, then a ping that must be answered by a pong, or a message that
// must be answered by a message matching Expect, then a close 1000.
type WebSocketCheck struct {
	// Path is the request path of the upgrade.
	Path string
	// Subprotocol, when set, is offered and must be chosen.
	Subprotocol string
	// Send is a text message to send instead of a ping.
	Send string
	// Expect must match a message the target sends after Send; nil
	// accepts any message.
	Expect *regexp.Regexp
}

// Passive configures passive ejection: a target whose requests fail
// Failures times within Window is taken out for EjectFor, doubling on
// each ejection in a row up to MaxEjectFor.
type Passive struct {
	Failures    int
	Window      time.Duration
	EjectFor    time.Duration
	MaxEjectFor time.Duration
	// MaxEjectPercent caps the share of an upstream's targets that may be
	// out of rotation at once (ejected or unhealthy) for an ejection to
	// happen.
	MaxEjectPercent int
	// Count5xx counts answers with a 5xx status as failures.
	Count5xx bool
}
