package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
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

	mu        sync.Mutex
	sessions  map[*session]struct{} // guarded by mu
	upgrading int                   // guarded by mu: handshakes in progress
	draining  bool                  // guarded by mu
	drained   int                   // guarded by mu: sessions the drain closes, counted as they come
	changed   chan struct{}         // guarded by mu: closed when the two above shrink

	// stopSchedules is closed when the shutdown drain starts: reloads'
	// close schedules stop. Guarded by mu.
	stopSchedules chan struct{}
	// reloadDrain is the drain window of the last Reload. Guarded by mu.
	reloadDrain time.Duration
	// hurry is closed by Hurry: the drain sends every close left now.
	hurry     chan struct{}
	hurryOnce sync.Once
	// schedules are the goroutines of close schedules (see schedule).
	schedules sync.WaitGroup

	// ready is what a readiness probe answers (see SetReady).
	ready atomic.Bool

	// handOffs counts WebSocket legs the poller gave back to a pump
	// goroutine (see poller.handOff): low while the poller relays.
	handOffs atomic.Int64
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
}

// newSnapshot compiles the swappable part of o. It panics when a route
// names an upstream that is not in o.Upstreams: the caller's bug.
func newSnapshot(o *Options) *snapshot {
	sn := &snapshot{
		table:   o.Routes,
		trusted: o.TrustedProxies,
		write:   o.WriteTimeout,
		body:    o.BodyTimeout,
		sets:    map[*routes.Upstream]*upstream.Set{},
		byName:  make(map[string]*upstream.Set, len(o.Upstreams)),
		statics: map[*routes.Route]fasthttp.RequestHandler{},
		byID:    map[string]*routes.Route{},
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
	}
	return sn
}

// New returns a handler for o.Routes.
func New(o Options) *Handler {
	h := &Handler{
		accessLog: o.AccessLog,
		log:       o.Logger,
		closeWait: o.closeWait,
		sessions:  map[*session]struct{}{},
		changed:   make(chan struct{}),

		stopSchedules: make(chan struct{}),
		hurry:         make(chan struct{}),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.closeWait <= 0 {
		h.closeWait = closeWait
	}
	h.cur.Store(newSnapshot(&o))
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
			ctx.SetConnectionClose()
		}
	}()
	if status, msg := checkFraming(ctx); status != 0 {
		plainError(ctx, status, msg)
		ctx.SetConnectionClose()
		h.logRequest(ctx, nil, status, "")
		return
	}
	if isAbsoluteForm(ctx) {
		// RFC 9112 §3.2.2: the target's authority replaces Host, for
		// routing, the backend's Host and X-Forwarded-Host alike.
		ctx.Request.Header.SetHostBytes(ctx.Host())
	}
	sn := h.cur.Load()
	r := sn.table.Match(ctx.Method(), ctx.Host(), ctx.Path())
	if r == nil {
		plainError(ctx, fasthttp.StatusNotFound, "no route")
		h.logRequest(ctx, nil, fasthttp.StatusNotFound, "")
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
		h.serveWebSocket(ctx, sn, r)
		return
	default:
		h.serveHTTP(ctx, sn, r)
		return
	}
	applyResponseOps(&ctx.Response.Header, &r.ResponseHeaders)
	h.logRequest(ctx, r, ctx.Response.StatusCode(), "")
}

// ErrorHandler answers requests fasthttp could not parse. Set it as
// fasthttp.Server.ErrorHandler.
func (h *Handler) ErrorHandler(ctx *fasthttp.RequestCtx, err error) {
	status, msg := fasthttp.StatusBadRequest, "bad request"
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		status, msg = fasthttp.StatusRequestHeaderFieldsTooLarge, "request header too large"
	case isTimeout(err):
		status, msg = fasthttp.StatusRequestTimeout, "request timeout"
	case errors.Is(err, fasthttp.ErrUnsupportedTransferEncoding):
		status, msg = fasthttp.StatusNotImplemented, "unsupported transfer coding"
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		status, msg = fasthttp.StatusRequestEntityTooLarge, "request body too large"
	}
	if isTLSHandshakeError(err) {
		// Nothing useful can be written on a connection whose TLS
		// handshake failed; fasthttp closes it after this handler.
		ctx.SetConnectionClose()
		h.log.Debug("tls handshake failed", "client", ctx.RemoteAddr().String(), "error", err.Error())
		return
	}
	plainError(ctx, status, msg)
	h.log.Info("bad request", "status", status, "client", ctx.RemoteAddr().String(), "error", err.Error())
}

// isTLSHandshakeError reports whether err comes from a failed TLS
// handshake (a plain-HTTP client on an HTTPS listener, a bad hello, …).
func isTLSHandshakeError(err error) bool {
	var rh tls.RecordHeaderError
	var alert tls.AlertError
	return errors.As(err, &rh) || errors.As(err, &alert) || strings.HasPrefix(err.Error(), "tls: ")
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
func (h *Handler) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// beginUpgrade counts a handshake in progress; it fails while draining.
func (h *Handler) beginUpgrade() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.draining {
		return false
	}
	h.upgrading++
	return true
}

// endUpgrade ends a handshake; s is the session it produced, or nil.
func (h *Handler) endUpgrade(s *session) {
	h.mu.Lock()
	h.upgrading--
	draining := h.draining
	if s != nil {
		h.sessions[s] = struct{}{}
		if draining {
			h.drained++
			s.goAway() // not started yet: run sends the 1001
		}
	}
	h.signalLocked()
	h.mu.Unlock()
	if s != nil && !draining {
		h.recheck(s)
	}
}

// removeSession ends s's registration and its hold on its target. A
// session is removed once, however it ends (its last pump, a cut before
// it started, or the abandon timer); a second call does nothing.
func (h *Handler) removeSession(s *session) {
	if !s.removed.CompareAndSwap(false, true) {
		return
	}
	if s.target != nil {
		s.target.SessionClosed()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.sessions, s)
	h.signalLocked()
}

func (h *Handler) signalLocked() {
	if h.changed == nil {
		return // a Handler built without New (tests)
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// Drain refuses new WebSocket upgrades, sends close 1001 "going away" to
// both legs of every session, each at a random moment within spread (0:
// all at once) so that clients do not reconnect in one herd, and waits
// until all sessions have ended or ctx is done. Then it cuts what is left
// and returns ctx.Err(), so a forced drain is visible to the caller.
// Reloads' close schedules stop: this closes every session. fasthttp's
// Shutdown ignores hijacked connections, which is why this exists; run
// both side by side.
func (h *Handler) Drain(ctx context.Context, spread time.Duration) (DrainResult, error) {
	h.mu.Lock()
	if !h.draining {
		h.draining = true
		close(h.stopSchedules)
	}
	h.drained = len(h.sessions)
	now := time.Now()
	due := make([]scheduledClose, 0, len(h.sessions))
	for s := range h.sessions {
		at := now
		if spread > 0 {
			at = now.Add(time.Duration(rand.Int64N(int64(spread))))
		}
		due = append(due, scheduledClose{s: s, at: at, code: closeGoingAway, reason: "going away"})
	}
	h.mu.Unlock()

	stop := make(chan struct{})
	h.schedule(due, stop, h.hurry)
	defer func() {
		close(stop)
		h.schedules.Wait()
	}()
	for {
		h.mu.Lock()
		n := len(h.sessions) + h.upgrading
		ch := h.changed
		h.mu.Unlock()
		if n == 0 {
			h.mu.Lock()
			defer h.mu.Unlock()
			return DrainResult{Closed: h.drained}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			h.mu.Lock()
			cut := len(h.sessions)
			total := h.drained
			h.mu.Unlock()
			h.forceClose()
			return DrainResult{Closed: total - cut, Cut: cut}, ctx.Err()
		}
	}
}

// DrainResult counts how the sessions of a drain ended.
type DrainResult struct {
	// Closed sessions ended within the budget, after their close.
	Closed int
	// Cut sessions were still open at the end of the budget: their
	// connections were closed without a close handshake.
	Cut int
}

// Hurry makes a drain in progress (or one that starts later) send every
// close it has left at once: a second shutdown signal.
func (h *Handler) Hurry() { h.hurryOnce.Do(func() { close(h.hurry) }) }

// forceClose cuts every session's connections and waits for the sessions
// to end (they do at once: their pumps fail on the closed connections).
func (h *Handler) forceClose() {
	for {
		h.mu.Lock()
		n := len(h.sessions)
		ch := h.changed
		for s := range h.sessions {
			s.closeConns()
		}
		h.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-time.After(h.closeWait):
			h.log.Warn("sessions did not end after their connections were closed", "sessions", n)
			return
		}
	}
}
