package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/ratelimit"
	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// Options configures a [Handler].
type Options struct {
	// Routes is the route table; required.
	Routes *routes.Table
	// Upstreams are the live upstreams the routes name; every upstream a
	// route names must be here. The caller starts and closes them.
	Upstreams []*upstream.Set
	// TrustedProxies are the peers whose X-Forwarded-* headers are kept.
	TrustedProxies []netip.Prefix
	// WriteTimeout is the longest silence allowed while writing to a
	// client (streamed bodies, WebSocket frames). Default 60s.
	WriteTimeout time.Duration
	// BodyTimeout is the longest silence allowed between two reads of a
	// streamed request body. Default 60s.
	BodyTimeout time.Duration
	// AccessLog logs one line per HTTP request at info level.
	AccessLog bool
	// Logger receives all logs; nil means slog.Default().
	Logger *slog.Logger

	// closeWait replaces the close-handshake budget closeWait when set.
	// Tests raise it far above their own hang guards, so that a close
	// seen in time can only have come from the path under test.
	closeWait time.Duration
}

// Handler is the fasthttp request handler of wsgate: it matches routes,
// forwards HTTP, performs both WebSocket handshakes and owns the relays.
// It is safe for concurrent use.
type Handler struct {
	// cur is the config requests are served with: one atomic load at the
	// top of ServeHTTP, and everything a request reads comes from it.
	// Reload swaps it.
	cur       atomic.Pointer[snapshot]
	accessLog bool
	log       *slog.Logger
	closeWait time.Duration // the close-handshake budget (see closeWait)

	// reg holds the WebSocket sessions.
	reg *wsrelay.Registry

	// stats are the routes' request counters by route name: made once
	// per name, kept across reloads (each snapshot points at them).
	statsMu sync.Mutex
	stats   map[string]*routeStats // guarded by statsMu
	noRoute *routeStats            // requests that matched no route

	// limits count the WebSocket sessions of routes that have session
	// limits, by route ID (see admitSession).
	limitsMu sync.Mutex
	limits   map[string]*sessionLimits // guarded by limitsMu
	// rates are the routes' request rate limits, by route ID.
	rates map[string]*ratelimit.Keyed[netip.Addr] // guarded by limitsMu

	// jwks are the JWK Set URLs the routes verify tokens with, fetched
	// in the background; a reload stops those no longer used.
	jwksMu sync.Mutex
	jwks   map[string]*jwksFetcher // guarded by jwksMu

	// reloadDrain is the drain window of the last Reload (unix
	// nanoseconds as a duration).
	reloadDrain atomic.Int64

	// ready is what a readiness probe answers (see SetReady).
	ready atomic.Bool
}

// snapshot is what one config gives the request path. It is immutable:
// a reload builds a new one and swaps it whole.
type snapshot struct {
	table   *routes.Table
	trusted []netip.Prefix
	write   time.Duration
	body    time.Duration
	sets    map[*routes.Upstream]*upstream.Set
	byName  map[string]*upstream.Set
	statics map[*routes.Route]fasthttp.RequestHandler
	byID    map[string]*routes.Route // routes by ID, for Reload
	// relay is what the sessions of each WebSocket route share, policy
	// what they enforce.
	relay  map[*routes.Route]*wsrelay.Route
	policy map[*routes.Route]*wsrelay.Policy
	// rates are the request rate limits of the routes that have one.
	rates map[*routes.Route]*ratelimit.Keyed[netip.Addr]
	// auths are the auth services of the routes that have one, jwts
	// their token checks.
	auths map[*routes.Route]*forwardAuth
	jwts  map[*routes.Route]*jwtAuth
	// stats are the routes' request counters.
	stats map[*routes.Route]*routeStats
}

// newSnapshot compiles the swappable part of o. It panics when a route
// names an upstream that is not in o.Upstreams: the caller's bug.
func newSnapshot(o *Options, h *Handler) *snapshot {
	sn := &snapshot{
		table:   o.Routes,
		trusted: o.TrustedProxies,
		write:   o.WriteTimeout,
		body:    o.BodyTimeout,
		sets:    map[*routes.Upstream]*upstream.Set{},
		byName:  make(map[string]*upstream.Set, len(o.Upstreams)),
		statics: map[*routes.Route]fasthttp.RequestHandler{},
		byID:    map[string]*routes.Route{},
		relay:   map[*routes.Route]*wsrelay.Route{},
		policy:  map[*routes.Route]*wsrelay.Policy{},
		rates:   map[*routes.Route]*ratelimit.Keyed[netip.Addr]{},
		auths:   map[*routes.Route]*forwardAuth{},
		jwts:    map[*routes.Route]*jwtAuth{},
		stats:   map[*routes.Route]*routeStats{},
	}
	if sn.write <= 0 {
		sn.write = 60 * time.Second
	}
	if sn.body <= 0 {
		sn.body = 60 * time.Second
	}
	for _, s := range o.Upstreams {
		sn.byName[s.Name()] = s
	}
	for _, r := range sn.table.Routes() {
		sn.byID[r.ID] = r
		sn.stats[r] = h.statsFor(metricName(r))
		if r.Upstream != nil && sn.sets[r.Upstream] == nil {
			s := sn.byName[r.Upstream.Name]
			if s == nil {
				panic(fmt.Sprintf("proxy: route %q names upstream %q, which is not in Options.Upstreams", r.Name, r.Upstream.Name))
			}
			sn.sets[r.Upstream] = s
		}
		if r.Static != nil {
			sn.statics[r] = newStatic(r)
		}
		if r.Upstream != nil && r.WebSocket.Enabled {
			sn.relay[r] = h.reg.Route(metricName(r), r.Upstream.Name)
			sn.policy[r] = policyOf(r)
		}
		if r.Limits.RequestsPerSecondPerIP > 0 {
			sn.rates[r] = h.ratesFor(r)
		}
		if r.Auth != nil && r.Auth.Forward != nil {
			sn.auths[r] = newForwardAuth(r.Auth.Forward)
		}
		if r.Auth != nil && r.Auth.JWT != nil {
			sn.jwts[r] = h.newJWTAuth(r.Auth.JWT)
		}
	}
	return sn
}

// New returns a handler for o.Routes.
func New(o Options) *Handler {
	h := &Handler{
		accessLog: o.AccessLog,
		log:       o.Logger,
		closeWait: o.closeWait,
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.closeWait <= 0 {
		h.closeWait = 5 * time.Second
	}
	h.reg = wsrelay.NewRegistry(wsrelay.Options{Logger: h.log, CloseWait: h.closeWait})
	h.stats = map[string]*routeStats{}
	h.limits = map[string]*sessionLimits{}
	h.rates = map[string]*ratelimit.Keyed[netip.Addr]{}
	h.jwks = map[string]*jwksFetcher{}
	h.noRoute = h.statsFor("")
	h.cur.Store(newSnapshot(&o, h))
	h.pruneJWKS()
	return h
}

// ServeHTTP handles one request. It recovers panics into 500 so that a bug
// costs one request, not the process.
func (h *Handler) ServeHTTP(ctx *fasthttp.RequestCtx) {
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("panic in handler", "panic", fmt.Sprint(v), "uri", string(ctx.RequestURI()))
			ctx.Response.Reset()
			plainError(ctx, fasthttp.StatusInternalServerError, "internal error")
			ctx.Response.Header.SetCanonical(hdrRequestID, ctx.Request.Header.PeekBytes(hdrRequestID))
			ctx.SetConnectionClose()
		}
	}()
	sn := h.cur.Load()
	id := setRequestID(ctx, sn.trusted)
	if status, msg := checkFraming(ctx); status != 0 {
		plainError(ctx, status, msg)
		ctx.SetConnectionClose()
		ctx.Response.Header.SetCanonical(hdrRequestID, id)
		h.logRequest(ctx, nil, status, "")
		return
	}
	if isAbsoluteForm(ctx) {
		// RFC 9112 §3.2.2: the target's authority replaces Host, for
		// routing, the backend's Host and X-Forwarded-Host alike.
		ctx.Request.Header.SetHostBytes(ctx.Host())
	}
	r := sn.table.Match(ctx.Method(), ctx.Host(), ctx.Path())
	if r == nil {
		plainError(ctx, fasthttp.StatusNotFound, "no route")
		ctx.Response.Header.SetCanonical(hdrRequestID, id)
		h.logRequest(ctx, nil, fasthttp.StatusNotFound, "")
		return
	}
	if len(sn.rates) > 0 && sn.rates[r] != nil {
		if ok, retry := sn.rates[r].Allow(clientAddr(ctx, sn.trusted), time.Now().UnixNano()); !ok {
			sn.stats[r].rateLimited.Add(1)
			tooManyRequests(ctx, retry)
			if isUpgradeAttempt(ctx) && r.WebSocket.Enabled {
				h.countHandshake(ctx, r, fasthttp.StatusTooManyRequests)
			}
			ctx.Response.Header.SetCanonical(hdrRequestID, id)
			h.logRequest(ctx, r, fasthttp.StatusTooManyRequests, "")
			return
		}
	}
	var expires time.Time
	if len(sn.jwts) > 0 && sn.jwts[r] != nil {
		exp, ok := h.verifyJWT(ctx, sn, r, sn.jwts[r])
		if !ok {
			if isUpgradeAttempt(ctx) && r.WebSocket.Enabled {
				h.countHandshake(ctx, r, ctx.Response.StatusCode())
			}
			ctx.Response.Header.SetCanonical(hdrRequestID, id)
			h.logRequest(ctx, r, ctx.Response.StatusCode(), "")
			return
		}
		if !exp.IsZero() {
			expires = exp.Add(r.Auth.JWT.ExpiryGrace)
		}
	}
	if len(sn.auths) > 0 && sn.auths[r] != nil && !h.authorize(ctx, sn, r, sn.auths[r]) {
		if isUpgradeAttempt(ctx) && r.WebSocket.Enabled {
			h.countHandshake(ctx, r, ctx.Response.StatusCode())
		}
		ctx.Response.Header.SetCanonical(hdrRequestID, id)
		h.logRequest(ctx, r, ctx.Response.StatusCode(), "")
		return
	}
	switch {
	case r.Respond != nil:
		ctx.SetStatusCode(r.Respond.Status)
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString(r.Respond.Body)
	case r.Redirect != nil:
		ctx.Response.Header.Set("Location", r.Redirect.To)
		ctx.SetStatusCode(r.Redirect.Status)
	case r.Static != nil:
		sn.statics[r](ctx)
	case isUpgradeAttempt(ctx) && r.WebSocket.Enabled:
		h.serveWebSocket(ctx, sn, r, expires)
		ctx.Response.Header.SetCanonical(hdrRequestID, id)
		h.countHandshake(ctx, r, ctx.Response.StatusCode())
		return
	default:
		h.serveHTTP(ctx, sn, r)
		ctx.Response.Header.SetCanonical(hdrRequestID, id)
		return
	}
	applyResponseOps(&ctx.Response.Header, &r.ResponseHeaders)
	ctx.Response.Header.SetCanonical(hdrRequestID, id)
	h.logRequest(ctx, r, ctx.Response.StatusCode(), "")
}

// plainError writes a short plain-text error response.
func plainError(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(msg + "\n")
}

// checkFraming refuses requests whose framing a later hop could read
// differently (RFC 9112 §6.1, §6.3): Content-Length together with
// Transfer-Encoding, a transfer coding other than chunked, duplicate Host.
// fasthttp itself rejects duplicate and invalid Content-Length.
func checkFraming(ctx *fasthttp.RequestCtx) (int, string) {
	raw := ctx.Request.Header.RawHeaders()
	var cl, te, host int
	var teValue []byte
	for len(raw) > 0 {
		var line []byte
		if i := indexCRLF(raw); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			line, raw = raw, nil
		}
		colon := indexByteOf(line, ':')
		if colon <= 0 {
			continue
		}
		name := line[:colon]
		switch {
		case equalFoldASCII(name, "content-length"):
			cl++
		case equalFoldASCII(name, "transfer-encoding"):
			te++
			teValue = trimOWS(line[colon+1:])
		case equalFoldASCII(name, "host"):
			host++
		}
	}
	switch {
	case cl > 0 && te > 0:
		return fasthttp.StatusBadRequest, "both Content-Length and Transfer-Encoding"
	case te > 0 && !equalFoldASCII(teValue, "chunked"):
		return fasthttp.StatusNotImplemented, "unsupported transfer coding"
	case host > 1:
		return fasthttp.StatusBadRequest, "duplicate Host"
	case host == 0 && ctx.Request.Header.IsHTTP11():
		return fasthttp.StatusBadRequest, "missing Host"
	}
	return 0, ""
}

func indexCRLF(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

func indexByteOf(b []byte, c byte) int {
	for i := range b {
		if b[i] == c {
			return i
		}
	}
	return -1
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// logRequest writes the access log line of a request answered in the handler.
func (h *Handler) logRequest(ctx *fasthttp.RequestCtx, r *routes.Route, status int, backend string) {
	h.count(ctx, r, status, time.Since(ctx.Time()))
	if !h.accessLog {
		return
	}
	route := ""
	if r != nil {
		route = r.Name
	}
	h.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("method", string(ctx.Method())),
		slog.String("host", string(ctx.Host())),
		slog.String("uri", string(ctx.RequestURI())),
		slog.Int("status", status),
		slog.String("route", route),
		slog.String("backend", backend),
		slog.String("client", ctx.RemoteAddr().String()),
		slog.String("request_id", string(ctx.Request.Header.PeekBytes(hdrRequestID))),
		slog.Int64("duration_ms", time.Since(ctx.Time()).Milliseconds()),
	)
}

// SetReady sets what [Handler.Ready] reports: the process owning the
// handler sets it once every listener serves, and clears it the moment a
// shutdown begins, before shutdown_delay, so that a load balancer stops
// sending traffic while the listeners still accept.
func (h *Handler) SetReady(ready bool) { h.ready.Store(ready) }

// Ready reports whether the handler should receive new traffic: what a
// readiness endpoint (/readyz) answers. False until SetReady(true).
func (h *Handler) Ready() bool { return h.ready.Load() }

// Sessions returns the number of live WebSocket sessions.
func (h *Handler) Sessions() int { return h.reg.Len() }

// Registry returns the registry of the handler's WebSocket sessions.
func (h *Handler) Registry() *wsrelay.Registry { return h.reg }

// Drain refuses new WebSocket upgrades, sends close 1001 "going away" to
// both legs of every session, each at a random moment within spread (0:
// all at once) so that clients do not reconnect in one herd, and waits
// until all sessions have ended or ctx is done. Then it cuts what is left
// and returns ctx.Err(), so a forced drain is visible to the caller.
// Reloads' close schedules stop: this closes every session. fasthttp's
// Shutdown ignores hijacked connections, which is why this exists; run
// both side by side.
func (h *Handler) Drain(ctx context.Context, spread time.Duration) (DrainResult, error) {
	return h.reg.Drain(ctx, spread)
}

// DrainResult counts how the sessions of a drain ended.
type DrainResult = wsrelay.DrainResult

// Hurry makes a drain in progress (or one that starts later) send every
// close it has left at once: a second shutdown signal.
func (h *Handler) Hurry() { h.reg.Hurry() }
