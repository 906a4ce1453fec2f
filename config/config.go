package config

import (
	"net/netip"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// BuiltinDemo is the listeners[].builtin value that serves wsgate's demo
// backend (a page and a WebSocket echo) instead of the routes.
const BuiltinDemo = "demo"

// Defaults, applied by [Parse] to every absent or zero value. The field doc
// comments and config.example.yaml state the same values.
var (
	defaultLimits = Limits{
		HeaderBytes: 16 << 10,
		RequestBody: 100 << 20,
	}
	defaultTimeouts = Timeouts{
		RequestHeader: 10 * time.Second,
		RequestBody:   60 * time.Second,
		Write:         60 * time.Second,
		Idle:          60 * time.Second,
		Drain:         30 * time.Second,
		ReloadDrain:   30 * time.Second,
		ShutdownDelay: 0,
	}
)

// defaultAdminAddr is the admin listener's address when the admin
// section gives none: loopback, like Envoy's admin port.
const defaultAdminAddr = "127.0.0.1:9901"

const (
	defaultConnectTimeout   = 5 * time.Second
	defaultResponseTimeout  = 60 * time.Second
	defaultMaxConnections   = 0 // no cap
	defaultRetries          = 2
	maxRetries              = 15
	defaultTryTimeout       = 10 * time.Second
	defaultRetryBodyLimit   = 64 << 10
	maxRetryBodyLimit       = 16 << 20
	defaultResolveEvery     = 10 * time.Second
	defaultPolicy           = "round_robin"
	defaultHashKey          = "client_ip"
	defaultStickyCookie     = "wsgate_sticky"
	defaultHealthInterval   = 10 * time.Second
	defaultHealthTimeout    = 5 * time.Second
	defaultExpectStatus     = "200-399"
	defaultHealthyAfter     = 2
	defaultUnhealthyAfter   = 3
	defaultPassiveFailures  = 5
	maxPassiveFailures      = 10000
	defaultPassiveWindow    = 10 * time.Second
	defaultEjectFor         = 30 * time.Second
	defaultMaxEjectFor      = 5 * time.Minute
	defaultMaxEjectPercent  = 50
	defaultMaxMessageSize   = 16 << 20
	defaultIdleTimeout      = time.Hour
	defaultPingInterval     = 30 * time.Second
	defaultPingTimeout      = 10 * time.Second
	defaultTCPUserTimeout   = 60 * time.Second
	maxPolicyDuration       = 24 * time.Hour // ping.interval, ping.timeout, tcp_user_timeout
	defaultAuthTimeout      = 5 * time.Second
	defaultJWKSRefresh      = time.Hour
	defaultExpiryCloseCode  = 4001
	defaultExpiryReason     = "token expired"
	defaultHandshakeTimeout = 10 * time.Second
	defaultRespondStatus    = 200
	defaultRedirectStatus   = 302
	defaultMinVersion       = "1.2"
	defaultOnChange         = "drain"
	defaultOnChangeCode     = 1012
	defaultOnChangeReason   = "service restart"
	maxCloseReason          = 123 // RFC 6455 §5.5: a control frame's payload is at most 125 bytes
)

// Config is a loaded configuration: the YAML keys with every default filled
// in, plus the compiled fields Table and Trusted. Treat it as read-only; a
// reload loads a new one.
type Config struct {
	// Listeners are the addresses wsgate accepts connections on. At least one.
	Listeners []Listener `yaml:"listeners"`
	// Upstreams are the backend groups routes forward to, by name. Unused
	// upstreams are allowed.
	Upstreams map[string]*Upstream `yaml:"upstreams"`
	// Routes map requests to an upstream or a built-in handler; see
	// [routes.Table] for the precedence. Ties go to file order.
	Routes []Route `yaml:"routes"`
	// Limits caps request sizes.
	Limits Limits `yaml:"limits"`
	// Timeouts bound the client side of each connection and shutdown.
	Timeouts Timeouts `yaml:"timeouts"`
	// TrustedProxies are CIDRs ("10.0.0.0/8") or IPs whose X-Forwarded-For
	// header is kept; from any other peer it is replaced. Default none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Admin, when present, turns on the admin listener: health and
	// readiness probes, metrics, the JSON API and the dashboard. Default
	// none: no admin listener.
	Admin *Admin `yaml:"admin"`

	// Table is the compiled route table built from Routes.
	Table *routes.Table `yaml:"-"`
	// UpstreamConfigs are the upstreams compiled, by name: what
	// upstream.New turns into live target sets.
	UpstreamConfigs map[string]*upstream.Config `yaml:"-"`
	// Trusted is TrustedProxies parsed; a bare IP is a /32 or /128 prefix.
	Trusted []netip.Prefix `yaml:"-"`
	// Warnings are what `wsgate validate` prints as warnings: a valid
	// config that likely does not do what its author meant.
	Warnings []*FieldError `yaml:"-"`
}

// Admin configures the admin listener, a plain-HTTP server of its own,
// apart from the listeners. docs/admin.md describes its endpoints.
type Admin struct {
	// Addr is the host:port to listen on, such as "127.0.0.1:9901"; port 0
	// picks a free port. The host is an IP address, "localhost", or none
	// (":9901") for every interface. A host other than a loopback address
	// or localhost needs Token. It must not be a listener's address.
	// Default 127.0.0.1:9901.
	Addr string `yaml:"addr"`
	// Token, when set, is the bearer token the admin API asks for
	// ("Authorization: Bearer TOKEN"; docs/admin.md says which endpoints
	// need it): visible ASCII without spaces, best 16 bytes or more
	// (shorter is a warning). Set it from the environment, as
	// ${WSGATE_ADMIN_TOKEN}, rather than in the file. Default none, which
	// Addr allows only on a loopback address.
	Token string `yaml:"token" redact:"secret"`
	// TokenFile names a file that holds the token instead (surrounding
	// white space dropped): a mounted Kubernetes or Docker secret. wsgate
	// watches it, and a new token takes effect at once, without a
	// restart. Not with Token. Default none.
	TokenFile string `yaml:"token_file"`
	// ReadyRequiresHealthyTargets makes /readyz answer 503 while some
	// upstream has no healthy target, as well as while wsgate starts and
	// drains. Default false.
	ReadyRequiresHealthyTargets bool `yaml:"ready_requires_healthy_targets"`
	// PublicMetrics serves /metrics without the token, as /healthz and
	// /readyz are, for scrapers that send none (Kubernetes' prometheus.io
	// annotations): the counters name routes and upstreams, no session
	// and no secret. The session API and the rest still want the token.
	// Default false.
	PublicMetrics bool `yaml:"public_metrics"`
}

// Listener is one address to accept connections on.
type Listener struct {
	// Addr is the host:port to listen on, such as "127.0.0.1:8080" or
	// ":443"; port 0 picks a free port. Required.
	Addr string `yaml:"addr"`
	// TLS, when present, makes this an HTTPS listener. Default plain HTTP.
	TLS *ListenerTLS `yaml:"tls"`
	// Builtin selects what the listener serves: "" (the default) serves the
	// routes; "demo" serves wsgate's built-in demo backend (a page and a
	// WebSocket echo) instead.
	Builtin string `yaml:"builtin"`
	// ProxyProtocol accepts a PROXY protocol v1 or v2 header (HAProxy
	// send-proxy, AWS NLB, cloud load balancers) from trusted_proxies:
	// its source address is the client's. A connection from anyone else
	// that sends one is closed. Needs trusted_proxies. Default false.
	ProxyProtocol bool `yaml:"proxy_protocol"`
}

// ListenerTLS configures an HTTPS listener.
type ListenerTLS struct {
	// Certificates are the certificate and key files; the first pair is
	// the default when no SNI name matches. At least one.
	Certificates []CertPair `yaml:"certificates"`
	// MinVersion is the lowest TLS version accepted: "1.2" (the default)
	// or "1.3".
	MinVersion string `yaml:"min_version"`
	// MinVersionTLS is MinVersion compiled: tls.VersionTLS12 or
	// tls.VersionTLS13.
	MinVersionTLS uint16 `yaml:"-"`
}

// CertPair names a PEM certificate chain and its private key. Relative
// paths are relative to the config file's directory; after loading, both
// are absolute.
type CertPair struct {
	// Cert is the certificate chain file. Required.
	Cert string `yaml:"cert"`
	// Key is the private key file. Required.
	Key string `yaml:"key"`
}

// Upstream is a named group of backend servers and how requests are
// spread over them.
type Upstream struct {
	// Targets are the backend servers: each a URL (scheme http or https,
	// a host, an optional port, default 80 or 443, no path or query, such
	// as "http://127.0.0.1:9001") or a mapping {url, weight}. At least one.
	Targets []Target `yaml:"targets"`
	// TLS configures connections to https targets; allowed only when some
	// target is https. Default: system roots, the target's host name.
	TLS *UpstreamTLS `yaml:"tls"`
	// ConnectTimeout bounds the TCP connect to a target and, for https
	// targets, the TLS handshake after it (for WebSocket the handshake
	// falls under handshake_timeout). Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ResponseTimeout bounds the wait for the response head, and each
	// later silence while reading the response body. Default 60s.
	ResponseTimeout time.Duration `yaml:"response_timeout"`
	// MaxConnections caps what one target carries at once: open WebSocket
	// sessions plus HTTP requests in flight. A target at the cap is
	// skipped; when every target is, the client gets 503. Default 0: no
	// cap.
	MaxConnections int `yaml:"max_connections"`
	// Balance chooses a target for each request: a policy name, or a
	// mapping {policy, key, cookie, secret}. Default round_robin.
	Balance Balance `yaml:"balance"`
	// Health configures active health checks. Default none: every target
	// is taken as healthy.
	Health *Health `yaml:"health"`
	// Passive configures passive ejection of failing targets. Default
	// none: present (even as {}) turns it on with its defaults.
	Passive *Passive `yaml:"passive"`
	// Retries is how many other targets a request may be tried on after
	// the first: after a failed connect always, after a broken connection
	// only for an idempotent request whose body was held in memory.
	// 0 turns retries off. Default 2.
	Retries *int `yaml:"retries"`
	// TryTimeout is the time after which no new try of a request starts.
	// Default 10s.
	TryTimeout time.Duration `yaml:"try_timeout"`
	// RetryBodyLimit is the largest request body (of known length) read
	// into memory before a request goes out (with retries on), so that the
	// request can be sent again: after a failed connect any request, after
	// a broken connection an idempotent one. Larger and chunked bodies are
	// streamed. At most 16MiB. Default 64KiB.
	RetryBodyLimit Size `yaml:"retry_body_limit"`
	// Resolve resolves target host names every ResolveEvery and makes each
	// A/AAAA address a target with the same scheme, port and weight (DNS
	// discovery, such as a Kubernetes headless Service). Default false:
	// names are resolved at each connect.
	Resolve bool `yaml:"resolve"`
	// ResolveEvery is the time between two lookups; setting it turns
	// Resolve on. Default 10s.
	ResolveEvery time.Duration `yaml:"resolve_every"`
	// Resolvers are DNS servers (host or host:port, port default 53) used
	// for discovery instead of the system's. Default none: the system's.
	Resolvers []string `yaml:"resolvers"`
	// OnTargetRemoved is what a reload does to the open WebSocket
	// sessions of a target that is no longer in the upstream: drain
	// (close each with the route's on_change_code at a random moment
	// within timeouts.reload_drain), keep (leave it on its old target
	// until it ends) or close (at once). Default drain.
	OnTargetRemoved string `yaml:"on_target_removed"`
}

// Target is one backend server: in YAML a URL string, or a mapping
// {url, weight}.
type Target struct {
	// URL is the target, such as "http://127.0.0.1:9001". Required.
	URL string `yaml:"url"`
	// Weight is the target's share relative to the others, 1 to 256.
	// Default 1.
	Weight int `yaml:"weight"`

	unknown []*yaml.Node // keys of the mapping form that are not fields
}

// Balance chooses the balancing policy: in YAML a policy name, or a
// mapping.
type Balance struct {
	// Policy is round_robin (weighted), least_conn (fewest open WebSocket
	// sessions plus HTTP requests in flight, relative to weight), random
	// (the less loaded of two random targets), hash (rendezvous hashing of
	// key) or cookie (sticky sessions). Default round_robin.
	Policy string `yaml:"policy"`
	// Key is what hash hashes: client_ip, header:NAME, cookie:NAME or
	// query:NAME; a request without it goes round robin. Only with hash.
	// Default client_ip.
	Key string `yaml:"key"`
	// Cookie is the name of the sticky cookie. Only with cookie. Default
	// wsgate_sticky.
	Cookie string `yaml:"cookie"`
	// Secret keys the hash that names a target in the sticky cookie, so
	// that its value does not reveal the target's address; replicas that
	// share it agree on cookies. Only with cookie. Default: derived from
	// the upstream's name (stable, but guessable by whoever knows the
	// targets).
	Secret string `yaml:"secret" redact:"secret"`

	unknown []*yaml.Node
}

// Health configures active health checks: each target is checked every
// Interval, one check at a time.
type Health struct {
	// Path is the request path of an HTTP GET check, such as "/healthz".
	// Default none (then websocket is required).
	Path string `yaml:"path"`
	// Interval is the time between two checks of a target (±10 %).
	// Default 10s.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one check; at most interval. Default 5s, or interval
	// when that is shorter.
	Timeout time.Duration `yaml:"timeout"`
	// ExpectStatus lists the statuses an HTTP check accepts: codes,
	// ranges and classes, comma-separated, such as "200", "200-299, 304"
	// or "2xx". Default "200-399".
	ExpectStatus string `yaml:"expect_status"`
	// HealthyAfter passes in a row bring an unhealthy target back.
	// Default 2.
	HealthyAfter int `yaml:"healthy_after"`
	// UnhealthyAfter failures in a row take a target out. Default 3.
	UnhealthyAfter int `yaml:"unhealthy_after"`
	// StartUnhealthy keeps a target out of rotation until its first
	// check passes, when wsgate has not seen it before: at start, added by
	// a reload, or discovered by DNS (a new pod that is not ready yet).
	// With admin.ready_requires_healthy_targets, /readyz then waits for
	// the backends. Default false: a target is in rotation at once.
	StartUnhealthy bool `yaml:"start_unhealthy"`
	// Headers are sent with every check; a Host here replaces the
	// target's host. Default none.
	Headers map[string]string `yaml:"headers" redact:"headers"`
	// WebSocket configures a WebSocket check. Default none.
	WebSocket *WebSocketCheck `yaml:"websocket"`
}

// WebSocketCheck is a real WebSocket conversation with each target: an
// upgrade (with its Sec-WebSocket-Accept checked), then a ping that must
// be answered by a pong, or Send answered by a message matching Expect,
// within health.timeout, then a close 1000.
type WebSocketCheck struct {
	// Path is the request path of the upgrade. Required.
	Path string `yaml:"path"`
	// Subprotocol is offered, and must be chosen. Default none.
	Subprotocol string `yaml:"subprotocol"`
	// Send is a text message to send instead of a ping. Default none.
	Send string `yaml:"send"`
	// Expect is a regular expression (RE2) that some message the target
	// sends after Send must match. Requires send. Default: any message.
	Expect string `yaml:"expect"`
}

// Passive configures passive ejection: connect failures, timeouts and
// broken connections (and, with count_5xx, 5xx answers) are counted per
// target; Failures of them within Window take the target out for
// EjectFor, doubling on each ejection in a row up to MaxEjectFor. An
// active check that passes, or the end of the period, brings it back.
type Passive struct {
	// Failures within Window eject a target, 1 to 10000. Default 5.
	Failures int `yaml:"failures"`
	// Window is the period failures are counted in. Default 10s.
	Window time.Duration `yaml:"window"`
	// EjectFor is the first ejection's length. Default 30s.
	EjectFor time.Duration `yaml:"eject_for"`
	// MaxEjectFor caps the doubled lengths; a target back for longer than
	// this starts over at EjectFor. Default 5m, or eject_for when that is
	// longer.
	MaxEjectFor time.Duration `yaml:"max_eject_for"`
	// MaxEjectPercent is the largest share of the targets that may be out
	// of rotation (ejected or unhealthy) for an ejection to happen, so a
	// fleet-wide failure never leaves no target. 1 to 100. Default 50.
	MaxEjectPercent int `yaml:"max_eject_percent"`
	// Count5xx counts answers with a 5xx status as failures. Default
	// false.
	Count5xx bool `yaml:"count_5xx"`
}

// UpstreamTLS configures the client side of TLS to https targets.
type UpstreamTLS struct {
	// CA is a PEM file of CA certificates to trust instead of the system
	// roots. Relative to the config file's directory. Default none.
	CA string `yaml:"ca"`
	// ServerName is the name checked against the target's certificate
	// (and sent as SNI). Default: the target's host.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate. Default false; never set
	// it outside tests.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Route is one entry of the YAML routes list. Exactly one of Upstream,
// Respond, Redirect and Static says what handles a matching request.
type Route struct {
	// Name labels the route in logs. Default "routes[N]", N counting from 0.
	Name string `yaml:"name"`
	// Match selects the requests the route handles.
	Match Match `yaml:"match"`
	// Upstream is the name of the upstream that receives the request.
	Upstream string `yaml:"upstream"`
	// StripPrefix removes Match.PathPrefix from the path before
	// forwarding. Requires path_prefix. Default false.
	StripPrefix bool `yaml:"strip_prefix"`
	// RewriteRedirects, with StripPrefix, puts a backend's Location and
	// Content-Location that point outside the prefix back under it, as
	// nginx's proxy_redirect default does: "/login" becomes "/app/login",
	// and an absolute URL naming the backend (its target address or the
	// Host sent to it) becomes a path, which the client resolves against
	// the URL it used. Other hosts and relative paths are untouched.
	// Applies only with strip_prefix. Default true.
	RewriteRedirects *bool `yaml:"rewrite_redirects"`
	// MaxRequestBody caps the request body (413 beyond it). Default
	// limits.request_body.
	MaxRequestBody Size `yaml:"max_request_body"`
	// RequestHeaders edits the request sent to the upstream. Default none.
	RequestHeaders Headers `yaml:"request_headers"`
	// ResponseHeaders edits the response sent to the client. Default none.
	ResponseHeaders Headers `yaml:"response_headers"`
	// WebSocket holds the route's WebSocket settings.
	WebSocket WebSocket `yaml:"websocket"`
	// Limits caps the route's request rate per client address.
	Limits RouteLimits `yaml:"limits"`
	// Auth checks every request (and WebSocket handshake) before it is
	// forwarded. Default none.
	Auth *Auth `yaml:"auth"`
	// Respond answers with a fixed status and body instead of an upstream.
	Respond *Respond `yaml:"respond"`
	// Redirect answers with a redirect instead of an upstream.
	Redirect *Redirect `yaml:"redirect"`
	// Static serves files from a directory instead of an upstream.
	Static *Static `yaml:"static"`
}

// Match selects requests. At least one of Path and PathPrefix is required.
type Match struct {
	// Host is one host or a list: exact names ("example.com") or one-label
	// wildcards ("*.example.com"), compared without case. Default any host.
	Host Hosts `yaml:"host"`
	// Path matches this exact request path, such as "/chat".
	Path string `yaml:"path"`
	// PathPrefix matches the path and everything below it on a segment
	// boundary: "/api" matches "/api" and "/api/x", never "/apix". A
	// trailing slash makes no difference.
	PathPrefix string `yaml:"path_prefix"`
	// Methods restricts the route to these methods (upper-cased on load).
	// Default all methods.
	Methods []string `yaml:"methods"`
}

// Headers lists header edits: removals first, then sets.
type Headers struct {
	// Set adds or replaces each header with the value. Default none.
	Set map[string]string `yaml:"set" redact:"headers"`
	// Remove deletes these headers (names compared without case).
	// Default none.
	Remove []string `yaml:"remove"`
}

// WebSocket holds the per-route WebSocket settings.
type WebSocket struct {
	// Enabled allows WebSocket upgrades on the route; when false an upgrade
	// request is forwarded as plain HTTP. Default true.
	Enabled *bool `yaml:"enabled"`
	// Origins is the allow-list of browser Origin values, each
	// scheme://host[:port] such as "https://app.example.com" (compared
	// without case); others get 403. Default empty: allow every origin.
	Origins []string `yaml:"origins"`
	// MaxMessageSize caps one message as it travels on the wire, summed over
	// its frames (compressed size under permessage-deflate); beyond it the
	// sender gets close 1009 and the other side 1001. Default 16MiB.
	MaxMessageSize Size `yaml:"max_message_size"`
	// IdleTimeout closes a session after no frame in either direction for
	// this long. Default 1h.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// HandshakeTimeout bounds dialling the backend and its 101 answer.
	// Default 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// OnChange is what a reload does to the route's open sessions when
	// the route was removed or changed in what governs a live session
	// (max_message_size, idle_timeout, origins, enabled, the upstream
	// name): drain (close each at a random moment within
	// timeouts.reload_drain), keep (leave it running with its old
	// settings until it ends) or close (at once). Default drain.
	OnChange string `yaml:"on_change"`
	// OnChangeCode is the close code a client gets when a reload ends its
	// session: 1000, 1001, 1008, 1011 to 1013, or 3000 to 4999. Default
	// 1012 (service restart).
	OnChangeCode int `yaml:"on_change_code"`
	// OnChangeReason is the close reason sent with OnChangeCode, at most
	// 123 bytes. Default "service restart".
	OnChangeReason *string `yaml:"on_change_reason"`
	// Subprotocols is the allow-list of subprotocols (tokens, compared
	// exactly): the client's Sec-WebSocket-Protocol offer is filtered to
	// it before the backend is dialled, in the client's order. Default
	// empty: the offer passes untouched.
	Subprotocols []string `yaml:"subprotocols"`
	// RequireSubprotocol, with Subprotocols, refuses (400) a handshake
	// whose offer holds none of them, an empty offer included; when false
	// such a handshake goes on without a subprotocol. Default true.
	RequireSubprotocol *bool `yaml:"require_subprotocol"`
	// MaxSessions caps the route's WebSocket sessions in this process,
	// handshakes in progress included: beyond it a handshake gets 503
	// with Retry-After before the backend is dialled. Default 0: no cap.
	MaxSessions int `yaml:"max_sessions"`
	// MaxSessionsPerIP caps them per client address (behind
	// trusted_proxies, the address X-Forwarded-For gives): beyond it 429
	// with Retry-After. Default 0: no cap.
	MaxSessionsPerIP int `yaml:"max_sessions_per_ip"`
	// Ping turns on wsgate's own keepalive pings on both legs of each
	// session, such as {interval: 30s, timeout: 10s}. Default off.
	Ping *Ping `yaml:"ping"`
	// TCPUserTimeout is set as TCP_USER_TIMEOUT on both legs: a peer
	// that leaves data unacknowledged this long (vanished without a FIN)
	// is cut, rather than after the kernel's ~15 minutes of
	// retransmissions. Default 60s.
	TCPUserTimeout time.Duration `yaml:"tcp_user_timeout"`
	// MaxMessagesPerSecond limits the data messages of each session in
	// each direction (a token bucket of Burst messages). Default 0: no
	// limit.
	MaxMessagesPerSecond float64 `yaml:"max_messages_per_second"`
	// Burst is how many messages a sender may send at once before the
	// rate applies. Default: max_messages_per_second, at least 1.
	Burst int `yaml:"burst"`
	// RateLimitAction is what a message over the rate does: close (the
	// sender gets 1008 "message rate exceeded", the other side 1001) or
	// drop (the whole message is dropped and counted). Default close.
	RateLimitAction string `yaml:"rate_limit_action"`
	// ValidateUTF8 checks text messages as UTF-8 as they pass (1007 to
	// a sender of invalid text, 1001 to the other side). Compressed
	// (permessage-deflate) messages are not checked. Default true.
	ValidateUTF8 *bool `yaml:"validate_utf8"`
}

// Ping is a route's keepalive: a leg whose peer sent nothing for
// Interval gets a ping from wsgate (its pong is not forwarded); a leg that
// then stays silent for Timeout is dead and the session ends.
type Ping struct {
	// Interval is the silence after which wsgate pings. Default 30s.
	Interval time.Duration `yaml:"interval"`
	// Timeout is how long the answer may take. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// Auth is a route's authentication: an auth service asked about each
// request (forward), and/or a JWT the request must carry (jwt). With
// both, the JWT is checked first.
type Auth struct {
	// Forward asks an auth service about each request. Default none.
	Forward *ForwardAuth `yaml:"forward"`
	// JWT requires a valid JSON Web Token on each request. Default none.
	JWT *JWTAuth `yaml:"jwt"`
}

// JWTAuth verifies a JSON Web Token on each request and WebSocket
// handshake (signature, exp, nbf, and issuer and audience when set), and
// closes a WebSocket session when its token expires. A request without a
// valid token gets 401 with WWW-Authenticate (RFC 6750).
type JWTAuth struct {
	// Keys are PEM files of the public keys (or certificates) tokens may
	// be signed with: RSA, ECDSA or Ed25519. At least one of keys and
	// jwks is required.
	Keys []string `yaml:"keys"`
	// JWKS is a JSON Web Key Set: a file, or an http:// or https:// URL
	// fetched at start and then every jwks_refresh in the background
	// (and when a token names a key it does not know, at most once a
	// minute). Default none.
	JWKS string `yaml:"jwks"`
	// JWKSRefresh is how often a JWKS URL is fetched again. Default 1h.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// Issuer, when set, must be the token's iss. Default none.
	Issuer string `yaml:"issuer"`
	// Audience, when set, must be in the token's aud. Default none.
	Audience string `yaml:"audience"`
	// From is where the token is: "header" (Authorization: Bearer),
	// "header:NAME", "cookie:NAME" or "query:NAME" (browsers cannot set
	// headers on a WebSocket: use a cookie or the query, such as
	// query:access_token; a token in the query is removed from the URI
	// forwarded and logged). Default header.
	From string `yaml:"from"`
	// Algorithms are the signing algorithms accepted. Default RS256,
	// RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA.
	Algorithms []string `yaml:"algorithms"`
	// Leeway is the clock skew allowed on exp and nbf. Default 0s.
	Leeway time.Duration `yaml:"leeway"`
	// ClaimsToHeaders sets request headers from claims, such as
	// {sub: X-User}; the client's own values of these headers are always
	// removed. Default none.
	ClaimsToHeaders map[string]string `yaml:"claims_to_headers"`
	// ExpiryGrace is how long a WebSocket session may outlive its token's
	// exp. Default 0s.
	ExpiryGrace time.Duration `yaml:"expiry_grace"`
	// ExpiryCloseCode is the close code a client gets when its token
	// expires: 1000, 1001, 1008, 1011 to 1013, or 3000 to 4999. Default
	// 4001.
	ExpiryCloseCode int `yaml:"expiry_close_code"`
	// ExpiryCloseReason is sent with it, at most 123 bytes. Default
	// "token expired".
	ExpiryCloseReason *string `yaml:"expiry_close_reason"`
}

// ForwardAuth is nginx's auth_request, Traefik's ForwardAuth and Caddy's
// forward_auth: before a request or handshake is forwarded, wsgate sends
// the auth service a request with the original method, no body, the
// chosen headers and X-Forwarded-Method, -Uri, -Host, -Proto and -For. A
// 2xx answer lets the request through, with the chosen headers of the
// answer set on it; any other answer goes to the client as it is; an
// auth service that cannot be reached gives 503.
type ForwardAuth struct {
	// URL is the auth service's endpoint, http:// or https://. Required.
	URL string `yaml:"url"`
	// Timeout bounds the whole exchange with the auth service. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// CopyRequestHeaders are sent to the auth service as the client sent
	// them. Default [Authorization, Cookie, Origin].
	CopyRequestHeaders []string `yaml:"copy_request_headers"`
	// CopyResponseHeaders are taken from a 2xx answer onto the request
	// forwarded (such as X-User); the client's own values of these
	// headers are always removed. Default none.
	CopyResponseHeaders []string `yaml:"copy_response_headers"`
}

// RouteLimits caps the request rate of each client address on a route:
// HTTP requests and WebSocket handshakes alike.
type RouteLimits struct {
	// RequestsPerSecondPerIP is the rate each client address (behind
	// trusted_proxies, the address X-Forwarded-For gives) may send
	// requests at; over it, 429 with Retry-After. Default 0: no limit.
	RequestsPerSecondPerIP float64 `yaml:"requests_per_second_per_ip"`
	// Burst is how many requests an address may send at once. Default:
	// requests_per_second_per_ip, at least 1.
	Burst int `yaml:"burst"`
}

// Respond answers every matching request with a fixed status and body.
type Respond struct {
	// Status is the response status, 100 to 599. Default 200.
	Status int `yaml:"status"`
	// Body is the response body. Default empty.
	Body string `yaml:"body"`
}

// Redirect answers every matching request with a redirect.
type Redirect struct {
	// To is the Location value, such as "https://example.com/". Required.
	To string `yaml:"to"`
	// Status is 301, 302, 303, 307 or 308. Default 302.
	Status int `yaml:"status"`
}

// Static serves the files below a directory.
type Static struct {
	// Root is an existing directory, relative to the config file's
	// directory; after loading, an absolute path. Required.
	Root string `yaml:"root"`
}

// Limits caps request sizes. In YAML each is a size like 512, "64KiB" or
// "1MB" (see [Size]); here it is a byte count.
type Limits struct {
	// HeaderBytes caps the request head: request line and headers (431
	// beyond it). Default 16KiB.
	HeaderBytes int64 `yaml:"header_bytes"`
	// RequestBody caps a request body (413 beyond it); a route's
	// max_request_body overrides it. Default 100MiB.
	RequestBody int64 `yaml:"request_body"`
}

// Timeouts bound the client side of a connection and the shutdown.
type Timeouts struct {
	// RequestHeader is the time the whole request head has to arrive in.
	// Default 10s.
	RequestHeader time.Duration `yaml:"request_header"`
	// RequestBody is the longest silence between reads of a request body.
	// Default 60s.
	RequestBody time.Duration `yaml:"request_body"`
	// Write is the longest silence while writing to a client. Default 60s.
	Write time.Duration `yaml:"write"`
	// Idle is how long a keep-alive connection may wait for its next
	// request. Default 60s.
	Idle time.Duration `yaml:"idle"`
	// Drain is the budget for a graceful shutdown: finish requests and
	// close WebSocket sessions with 1001, spread with jitter over the
	// window so that clients do not reconnect in one herd. Default 30s.
	Drain time.Duration `yaml:"drain"`
	// ReloadDrain is the window over which a reload spreads the closes of
	// the sessions it ends with on_change: drain. Default 30s.
	ReloadDrain time.Duration `yaml:"reload_drain"`
	// ShutdownDelay is the wait after a shutdown signal before draining
	// starts, while the listeners still accept (for sidecars and load
	// balancers to notice). Default 0.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
}
