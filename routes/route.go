package routes

import (
	"crypto"
	"time"
)

// Route is one compiled entry of the route table. It is immutable once the
// table is built and shared by every request that matches it.
type Route struct {
	// Name identifies the route in logs: the YAML "name" or "routes[N]".
	Name string
	// ID identifies the route across reloads: "name:" and its YAML name,
	// or for an unnamed route "match:" and its match (hosts, path,
	// prefix, methods). Unique within a table.
	ID string
	// Index is the position of the route in the file (0-based); ties in
	// matching go to the lower index.
	Index int

	// Hosts are the lower-cased host patterns the route answers to: exact
	// names ("api.example.com") or one-label wildcards ("*.example.com").
	// Empty means any host.
	Hosts []string
	// Path, when set, matches the request path exactly.
	Path string
	// PathPrefix, when set, matches the path and every path below it, on a
	// segment boundary: "/api" matches "/api" and "/api/x", never "/apix".
	PathPrefix string
	// Methods restricts the route to these upper-case methods; empty means all.
	Methods []string

	// Upstream receives the request; nil for built-in handlers.
	Upstream *Upstream
	// StripPrefix removes PathPrefix from the path before forwarding.
	StripPrefix bool
	// RewriteRedirects, with StripPrefix, puts a backend's Location and
	// Content-Location that point outside PathPrefix back under it
	// (nginx's proxy_redirect default).
	RewriteRedirects bool
	// RequestHeaders edits the request sent to the upstream.
	RequestHeaders HeaderOps
	// ResponseHeaders edits the response sent to the client.
	ResponseHeaders HeaderOps
	// MaxRequestBody caps the request body in bytes (413 beyond it).
	MaxRequestBody int64
	// WebSocket holds the route's WebSocket settings.
	WebSocket WebSocket
	// Limits caps the route's request rate per client address.
	Limits Limits
	// Auth, when not nil, checks requests before they are forwarded.
	Auth *Auth

	// Respond, Redirect and Static are built-in handlers used instead of
	// an upstream; at most one of them and Upstream is set.
	Respond  *Respond
	Redirect *Redirect
	Static   *Static
}

// HeaderOps lists header edits, applied removals first, then sets.
type HeaderOps struct {
	// Set replaces (or adds) each header, in file order.
	Set []Header
	// Remove deletes headers by name (case-insensitive).
	Remove []string
}

// Header is one name/value pair.
type Header struct {
	Name, Value string
}

// WebSocket holds the per-route WebSocket settings.
type WebSocket struct {
	// Enabled allows WebSocket upgrades on the route. When false, an
	// upgrade request is forwarded as plain HTTP without its Upgrade header.
	Enabled bool
	// Origins is the allow-list of Origin values (scheme://host[:port],
	// lower-case); empty allows every origin.
	Origins []string
	// MaxMessageSize caps one message in wire bytes, summed over its
	// frames (close 1009 beyond it); 0 means unlimited (the config
	// always sets a limit).
	MaxMessageSize int64
	// IdleTimeout closes a session (1001 to both sides) after no frame in
	// either direction for this long; 0 disables it (the config always
	// sets one).
	IdleTimeout time.Duration
	// HandshakeTimeout bounds dialling the backend and its 101 answer.
	HandshakeTimeout time.Duration
	// OnChange is what a reload does to the route's open sessions when
	// the route changed or went away.
	OnChange ChangeAction
	// CloseCode and CloseReason are sent to the client of a session a
	// reload ends (drain or close): 1012 "service restart" by default.
	CloseCode   uint16
	CloseReason string
	// Subprotocols, when not empty, is the allow-list the client's
	// subprotocol offer is filtered to; with RequireSubprotocol an offer
	// left empty is refused (400).
	Subprotocols       []string
	RequireSubprotocol bool
	// MaxSessions caps the route's sessions in this process, handshakes
	// in progress included (503 beyond it); MaxSessionsPerIP caps them per
	// client address (429). 0: no cap.
	MaxSessions      int
	MaxSessionsPerIP int
	// PingInterval: wsgate pings a leg whose peer sent nothing for this
	// long, and ends the session if it then stays silent for
	// PingTimeout. 0: no pings.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// TCPUserTimeout is TCP_USER_TIMEOUT on both legs; 0: the kernel's.
	TCPUserTimeout time.Duration
	// MaxMessagesPerSecond and MessageBurst limit the data messages of
	// each session and direction (0: no limit); over it the sender gets
	// 1008, or with DropOverRate its message is dropped.
	MaxMessagesPerSecond float64
	MessageBurst         int
	DropOverRate         bool
	// ValidateUTF8 checks text messages as UTF-8 (1007 when invalid).
	ValidateUTF8 bool
}

// Auth is a route's authentication.
type Auth struct {
	// Forward, when not nil, asks an auth service about each request.
	Forward *ForwardAuth
	// JWT, when not nil, requires a valid token on each request.
	JWT *JWT
}

// JWT is how a route verifies JSON Web Tokens.
type JWT struct {
	// Keys are the public keys from PEM files; JWKS a JWK Set read from
	// a file; JWKSURL one fetched and refreshed every JWKSRefresh.
	Keys        []crypto.PublicKey `json:"-"`
	KeyFiles    []string
	JWKS        []byte `json:"-"`
	JWKSFile    string `json:",omitempty"`
	JWKSURL     string `json:",omitempty"`
	JWKSRefresh time.Duration
	Issuer      string `json:",omitempty"`
	Audience    string `json:",omitempty"`
	// From is where the token is: FromKind "header", "cookie" or
	// "query", and the name (for "header", Authorization means the
	// Bearer scheme).
	FromKind, FromName string
	Algorithms         []string
	Leeway             time.Duration
	// ClaimsToHeaders sets request headers from claims, sorted by header.
	ClaimsToHeaders []ClaimHeader `json:",omitempty"`
	// A WebSocket session ends ExpiryGrace after its token's exp, with
	// ExpiryCode and ExpiryReason to the client.
	ExpiryGrace  time.Duration
	ExpiryCode   uint16
	ExpiryReason string
}

// ClaimHeader is one claims_to_headers entry.
type ClaimHeader struct{ Claim, Header string }

// ForwardAuth asks an auth service about each request: 2xx lets it
// through (with CopyResponseHeaders set on it from the answer), any other
// answer goes to the client, an unreachable service gives 503.
type ForwardAuth struct {
	URL                 string // http:// or https://, with path and query
	Timeout             time.Duration
	CopyRequestHeaders  []string // canonical names
	CopyResponseHeaders []string // canonical names
}

// Limits caps what each client address may ask of a route.
type Limits struct {
	// RequestsPerSecondPerIP and RequestBurst limit the requests
	// (WebSocket handshakes included) of each client address: 429
	// beyond. 0: no limit.
	RequestsPerSecondPerIP float64
	RequestBurst           int
}

// ChangeAction is what a reload does to an open WebSocket session whose
// route changed or went away, or whose target left its upstream.
type ChangeAction uint8

const (
	// Drain closes the session at a random moment within the reload
	// drain window, so that clients do not reconnect in one herd.
	Drain ChangeAction = iota
	// Keep leaves the session running, with its old settings and target,
	// until it ends by itself.
	Keep
	// Close closes the session at once.
	Close
)

// ParseChangeAction returns the action named s: "drain", "keep" or
// "close".
func ParseChangeAction(s string) (ChangeAction, bool) {
	switch s {
	case "drain":
		return Drain, true
	case "keep":
		return Keep, true
	case "close":
		return Close, true
	}
	return Drain, false
}

// String returns the action's YAML name.
func (a ChangeAction) String() string {
	switch a {
	case Keep:
		return "keep"
	case Close:
		return "close"
	}
	return "drain"
}

// Upstream names the upstream a route forwards to. Routes naming the
// same upstream share one *Upstream; the proxy package maps it to the
// upstream's live targets (package upstream).
type Upstream struct {
	// Name is the key of the upstream in the YAML upstreams map.
	Name string
}

// Respond is a built-in handler answering with a fixed status and body.
type Respond struct {
	Status int
	Body   string
}

// Redirect is a built-in handler answering with a redirect.
type Redirect struct {
	// To is the Location value.
	To string
	// Status is 301, 302, 303, 307 or 308.
	Status int
}

// Static is a built-in handler serving files below Root.
type Static struct {
	Root string
}
