package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// Options configure the handler that [New] returns. Every function may be
// called from many goroutines at once. A nil function (or a nil Sessions
// or Metrics) turns its endpoints off: they answer 404, like unknown
// paths, except Ready: nil means always ready.
type Options struct {
	// Token, when not empty, is required as "Authorization: Bearer
	// <token>" on every endpoint but /healthz, /readyz and the dashboard
	// page itself, compared in constant time. A request without it, or
	// with another token, gets 401 with "WWW-Authenticate: Bearer".
	//
	// Without a token, only requests whose Host is an IP address or a
	// localhost name are served (403 otherwise), so that a web page
	// cannot reach a loopback admin listener through DNS rebinding.
	Token string
	// Sessions are the live WebSocket sessions.
	Sessions Sessions
	// Upstreams returns the status of every upstream of the running
	// config.
	Upstreams func() []upstream.SetStatus
	// Routes returns the route names of the running config: a broadcast
	// to another name answers 404.
	Routes func() []string
	// Config returns the running config, already redacted, as a value
	// encoding/json can marshal.
	Config func() any
	// Reload loads the config file again and applies it; see
	// [ReloadResult] for how its result maps to a status.
	Reload func() ReloadResult
	// Ready reports whether wsgate should get traffic, and why not.
	Ready func() (ready bool, why string)
	// Metrics serves /metrics.
	Metrics http.Handler
	// PublicMetrics serves /metrics without the token (and, without a
	// token, whatever the Host), as /healthz and /readyz are.
	PublicMetrics bool
	// Overview returns what the dashboard shows; /api/overview answers
	// it and /api/stream sends it every second.
	Overview func() Overview
	// Logger gets a line for every change made through the API (close,
	// send, broadcast, reload) and for refused credentials; nil
	// discards them.
	Logger *slog.Logger
}

// Sessions is the registry of live sessions, as the API uses it.
type Sessions interface {
	// List returns the sessions f selects, in start order.
	List(f wsrelay.Filter) []wsrelay.Info
	// Get returns the session with that id, if it is live.
	Get(id string) (wsrelay.Info, bool)
	// Close starts the closing handshake of a session with code and
	// reason. It returns [wsrelay.ErrNotFound] (404) or
	// [wsrelay.ErrClosing] (409); another error answers 500.
	Close(id string, code uint16, reason string) error
	// Send sends one message to the client of a session, a text message
	// unless binary. It returns [wsrelay.ErrNotFound] (404),
	// [wsrelay.ErrClosing] (409), [wsrelay.ErrTooBig] (413) or
	// [wsrelay.ErrBusy] (503); another error answers 500.
	Send(id string, binary bool, msg []byte) error
	// Broadcast sends one message to the client of every live session of
	// a route and returns how many sessions got it.
	Broadcast(route string, binary bool, msg []byte) (sent int)
}

// ReloadResult is what a reload did. POST /reload answers it as JSON,
// with status 503 when ShuttingDown, 422 when there are Problems, 500
// when there is an Error, 200 when OK.
type ReloadResult struct {
	// OK is true when the new config is running.
	OK bool `json:"ok"`
	// Problems are the errors of an invalid config; nothing was applied.
	Problems []string `json:"problems,omitempty"`
	// Error says why a valid config could not be applied.
	Error string `json:"error,omitempty"`
	// ShuttingDown is true when the reload was refused because wsgate
	// is shutting down.
	ShuttingDown bool `json:"-"`
	// Changes describe what the reload changed.
	Changes map[string]any `json:"changes,omitempty"`
}

// RouteOverview is the traffic of one route since the process started.
type RouteOverview struct {
	Route string `json:"route"`
	// Sessions are the sessions open now.
	Sessions int64 `json:"sessions"`
	// FromClient and FromBackend count the messages relayed each way
	// since the start, by live and ended sessions.
	FromClient  wsrelay.Flow `json:"from_client"`
	FromBackend wsrelay.Flow `json:"from_backend"`
	// Handshakes counts the successful upgrades since the start.
	Handshakes int64 `json:"handshakes"`
	// Refused counts the handshakes refused since the start.
	Refused int64 `json:"refused"`
}

// Overview is what the dashboard shows, taken at Time. The dashboard
// computes rates from the differences between two overviews.
type Overview struct {
	Time      time.Time            `json:"time"`
	Routes    []RouteOverview      `json:"routes"`
	Upstreams []upstream.SetStatus `json:"upstreams"`
	// Closes are the sessions that ended lately, most recent first.
	Closes []wsrelay.Closed `json:"closes"`
	// Sessions are the rows of the dashboard's session table; the
	// caller caps their number, SessionsTotal is how many are live.
	Sessions      []wsrelay.Info `json:"sessions"`
	SessionsTotal int            `json:"sessions_total"`
}

// Defaults of the overview stream.
const (
	streamInterval     = time.Second
	streamHeartbeat    = 15 * time.Second
	streamWriteTimeout = 10 * time.Second
)

// handler is the admin API. Its fields are set by newHandler (and by
// tests, before it serves) and read-only afterwards.
type handler struct {
	o   Options
	log *slog.Logger
	mux *http.ServeMux
	// tokenSum is the SHA-256 of Options.Token: comparing fixed-size
	// digests keeps the token's length out of the timing too.
	tokenSum [sha256.Size]byte
	csrf     *http.CrossOriginProtection
	page     []byte
	pageCSP  string

	// The stream sends an overview every interval, a comment every
	// heartbeat, and gives each write writeTimeout.
	interval     time.Duration
	heartbeat    time.Duration
	writeTimeout time.Duration

	mu       sync.Mutex
	shutdown map[*http.Server]chan struct{} // guarded by mu

	// closed is closed by Close: the handler is replaced (a new token)
	// and its streams must not outlive it.
	closed    chan struct{}
	closeOnce sync.Once
}

// Close ends the handler's open streams: a caller that replaces the
// handler (a reload with a new token) calls it, so that a stream
// authorised by the old token stops.
func (h *handler) Close() { h.closeOnce.Do(func() { close(h.closed) }) }

// New returns the admin API and dashboard described in the package
// documentation, configured by o.
//
// The streams of /api/stream end when their request's context ends,
// when the http.Server serving them starts its Shutdown, so that
// Shutdown does not wait for them, and when the handler's Close method
// (New's result has one) is called.
func New(o Options) http.Handler {
	return newHandler(o)
}

func newHandler(o Options) *handler {
	h := &handler{
		o:            o,
		log:          o.Logger,
		mux:          http.NewServeMux(),
		csrf:         http.NewCrossOriginProtection(),
		interval:     streamInterval,
		heartbeat:    streamHeartbeat,
		writeTimeout: streamWriteTimeout,
		shutdown:     make(map[*http.Server]chan struct{}),
		closed:       make(chan struct{}),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if o.Token != "" {
		h.tokenSum = sha256.Sum256([]byte(o.Token))
	}
	h.page, h.pageCSP = dashboardPage()

	m := h.mux
	m.HandleFunc("GET /healthz", h.healthz)
	m.HandleFunc("GET /readyz", h.readyz)
	m.HandleFunc("GET /{$}", h.dashboard)
	if o.Metrics != nil {
		m.Handle("GET /metrics", o.Metrics)
	}
	if o.Sessions != nil {
		m.HandleFunc("GET /api/sessions", h.listSessions)
		m.HandleFunc("GET /api/sessions/{id}", h.getSession)
		m.HandleFunc("DELETE /api/sessions/{id}", h.closeSession)
		m.HandleFunc("POST /api/sessions/{id}/messages", h.sendMessage)
		m.HandleFunc("POST /api/routes/{name}/broadcast", h.broadcast)
	}
	if o.Upstreams != nil {
		m.HandleFunc("GET /api/upstreams", h.upstreams)
	}
	if o.Config != nil {
		m.HandleFunc("GET /api/config", h.config)
	}
	if o.Reload != nil {
		m.HandleFunc("POST /reload", h.reload)
	}
	if o.Overview != nil {
		m.HandleFunc("GET /api/overview", h.overview)
		m.HandleFunc("GET /api/stream", h.stream)
	}
	return h
}

// ServeHTTP checks the caller, then routes the request. Unknown paths
// and wrong methods get JSON errors like every other failure.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Hook the server's Shutdown at its first request, long before a
	// stream needs it: a hook registered once Shutdown has begun would
	// never run.
	h.shutdownOf(r)
	open := r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || (h.o.PublicMetrics && r.URL.Path == "/metrics")
	if !open && !h.allowed(w, r) {
		return
	}
	if fallback, pattern := h.mux.Handler(r); pattern == "" {
		// No pattern: the mux would answer 404 or 405 (with Allow) in
		// plain text, or redirect to a clean path. Learn which, and say
		// it in JSON.
		c := capture{header: make(http.Header)}
		fallback.ServeHTTP(&c, r)
		switch c.code {
		case http.StatusNotFound:
			writeError(w, http.StatusNotFound, "no such endpoint %q", r.URL.Path)
			return
		case http.StatusMethodNotAllowed:
			allow := c.header.Get("Allow")
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "method %s not allowed on %q (allowed: %s)", r.Method, r.URL.Path, allow)
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// allowed reports whether r may go on, after answering it when not: the
// token (every path but the dashboard page), the Host when there is no
// token, and cross-origin browser requests that change things.
func (h *handler) allowed(w http.ResponseWriter, r *http.Request) bool {
	if h.o.Token == "" {
		if !isLocalHost(r.Host) {
			h.log.Info("admin request refused", "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeError(w, http.StatusForbidden, "host %q not allowed: without a token, the admin API answers only IP addresses and localhost", r.Host)
			return false
		}
	} else if r.URL.Path != "/" {
		// The page is exempt: a browser cannot send the header when it
		// navigates. Everything the page shows comes from authenticated
		// fetches.
		if msg := h.checkToken(r); msg != "" {
			h.log.Info("admin request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "error", msg)
			if msg == "invalid token" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="wsgate admin", error="invalid_token"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="wsgate admin"`)
			}
			writeError(w, http.StatusUnauthorized, "%s", msg)
			return false
		}
	}
	if err := h.csrf.Check(r); err != nil {
		h.log.Info("admin request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
		writeError(w, http.StatusForbidden, "%v", err)
		return false
	}
	return true
}

// checkToken returns why r's credentials are not the token, or "".
func (h *handler) checkToken(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return "missing bearer token"
	}
	// RFC 7235 section 2.1: the scheme is case-insensitive.
	scheme, token, _ := strings.Cut(auth, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "missing bearer token"
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(sum[:], h.tokenSum[:]) != 1 {
		return "invalid token"
	}
	return ""
}

// isLocalHost reports whether the Host header names an IP address or
// localhost, names no DNS rebinding can point elsewhere.
func isLocalHost(hostport string) bool {
	host := hostport
	if hst, _, err := net.SplitHostPort(hostport); err == nil {
		host = hst
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// capture records the status and headers of a response and drops its
// body.
type capture struct {
	header http.Header
	code   int
}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) Write(p []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	return len(p), nil
}

func (c *capture) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
}

// errorBody is every error answer.
type errorBody struct {
	Error string `json:"error"`
}

// writeError answers status with {"error": message}.
func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, errorBody{Error: fmt.Sprintf(format, args...)})
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: fmt.Sprintf("encode answer: %v", err)})
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeText answers status with a line of plain text.
func writeText(w http.ResponseWriter, status int, s string) {
	hd := w.Header()
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write([]byte(s))
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	writeText(w, http.StatusOK, "ok")
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	if h.o.Ready == nil {
		writeText(w, http.StatusOK, "ok")
		return
	}
	ready, why := h.o.Ready()
	if ready {
		writeText(w, http.StatusOK, "ok")
		return
	}
	if why == "" {
		why = "not ready"
	}
	writeText(w, http.StatusServiceUnavailable, why)
}

func (h *handler) upstreams(w http.ResponseWriter, r *http.Request) {
	us := h.o.Upstreams()
	if us == nil {
		us = []upstream.SetStatus{}
	}
	writeJSON(w, http.StatusOK, struct {
		Upstreams []upstream.SetStatus `json:"upstreams"`
	}{us})
}

func (h *handler) config(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.o.Config())
}

func (h *handler) reload(w http.ResponseWriter, r *http.Request) {
	res := h.o.Reload()
	status := reloadStatus(&res)
	h.log.Info("admin reload", "status", status, "ok", res.OK, "problems", len(res.Problems), "error", res.Error, "remote", r.RemoteAddr)
	writeJSON(w, status, res)
}

// reloadStatus returns the status that answers res, and gives res an
// Error when its status is an error that res does not explain.
func reloadStatus(res *ReloadResult) int {
	switch {
	case res.ShuttingDown:
		if res.Error == "" {
			res.Error = "shutting down"
		}
		return http.StatusServiceUnavailable
	case len(res.Problems) > 0:
		return http.StatusUnprocessableEntity
	case res.Error != "":
		return http.StatusInternalServerError
	case res.OK:
		return http.StatusOK
	default:
		res.Error = "reload failed"
		return http.StatusInternalServerError
	}
}

func (h *handler) overview(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.takeOverview())
}

// takeOverview returns Options.Overview with empty lists rather than
// nulls and the time set.
func (h *handler) takeOverview() Overview {
	o := h.o.Overview()
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	if o.Routes == nil {
		o.Routes = []RouteOverview{}
	}
	if o.Upstreams == nil {
		o.Upstreams = []upstream.SetStatus{}
	}
	if o.Closes == nil {
		o.Closes = []wsrelay.Closed{}
	}
	if o.Sessions == nil {
		o.Sessions = []wsrelay.Info{}
	}
	return o
}
