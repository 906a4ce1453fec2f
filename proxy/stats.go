package proxy

import (
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
)

// MethodClasses are the method labels requests are counted by: the
// common methods, and "other" for the rest (bounded, whatever clients
// send).
var MethodClasses = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}

// StatusClasses are the status labels requests are counted by.
var StatusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// ErrorKinds are the kinds of upstream errors: nothing could take the
// request (all targets down or busy), a connection refused, a timeout, a
// connection reset or closed before the answer, and an answer that was
// not valid HTTP (or broke off).
var ErrorKinds = [...]string{"unavailable", "refused", "timeout", "reset", "bad_response"}

// AuthReasons are why a route's auth refused a request: no token, a
// token that did not verify, an expired one; the auth service's denial,
// or no answer from it.
var AuthReasons = [...]string{"jwt_missing", "jwt_invalid", "jwt_expired", "forward_denied", "forward_unavailable"}

const (
	authJWTMissing = iota
	authJWTInvalid
	authJWTExpired
	authForwardDenied
	authForwardUnavailable
)

// DurationBounds are the upper bounds (seconds) of the request and
// handshake duration histograms' buckets.
var DurationBounds = [...]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// histogram counts durations in DurationBounds' buckets, lock-free.
type histogram struct {
	counts [len(DurationBounds) + 1]atomic.Uint64
	sumNs  atomic.Int64
}

func (hg *histogram) observe(d time.Duration) {
	sec := d.Seconds()
	i := 0
	for i < len(DurationBounds) && sec > DurationBounds[i] {
		i++
	}
	hg.counts[i].Add(1)
	hg.sumNs.Add(int64(d))
}

// Histogram is a snapshot of a histogram: Counts[i] observations were at
// most Bounds[i] and above the bound before (not cumulative); the last
// count is above every bound. Sum is in the bounds' unit.
type Histogram struct {
	Counts []uint64
	Sum    float64
}

func (hg *histogram) snapshot() Histogram {
	out := Histogram{Counts: make([]uint64, len(hg.counts)), Sum: time.Duration(hg.sumNs.Load()).Seconds()}
	for i := range hg.counts {
		out.Counts[i] = hg.counts[i].Load()
	}
	return out
}

// routeStats counts a route's requests and handshakes. Each field is
// updated with atomics by whichever request it concerns; Stats reads them
// at scrape time.
type routeStats struct {
	name           string
	requests       [len(MethodClasses)][len(StatusClasses)]atomic.Int64
	duration       histogram
	upstreamErrors [len(ErrorKinds)]atomic.Int64
	retries        atomic.Int64
	clientGone     atomic.Int64 // 499: the client left before the response ended
	rateLimited    atomic.Int64 // 429: over limits.requests_per_second_per_ip
	authRejected   [len(AuthReasons)]atomic.Int64

	handshakes        atomic.Int64 // upgrades that succeeded (101)
	handshakeDuration histogram
	refusedMu         sync.Mutex
	refused           map[int]int64 // guarded by refusedMu: failed handshakes by status
}

// RouteStats is what a route's requests did since the process started:
// what the metrics expose. A route is known by its name; requests that
// matched no route count under "".
type RouteStats struct {
	Route string
	// Requests[m][s] counts requests of MethodClasses[m] answered with a
	// status of StatusClasses[s] (WebSocket upgrades as 1xx).
	Requests [len(MethodClasses)][len(StatusClasses)]int64
	// Duration of requests, until the response head (streamed bodies:
	// until the body ended).
	Duration Histogram
	// UpstreamErrors[k] counts upstream errors of ErrorKinds[k].
	UpstreamErrors [len(ErrorKinds)]int64
	// Retries counts requests and handshakes sent again to another
	// target (or connection) after a failure.
	Retries int64
	// ClientGone counts responses the client did not wait for (499).
	ClientGone int64
	// RateLimited counts requests (handshakes included) refused with
	// 429 over limits.requests_per_second_per_ip.
	RateLimited int64
	// AuthRejected[i] counts requests the route's auth refused for
	// AuthReasons[i].
	AuthRejected [len(AuthReasons)]int64
	// Handshakes counts WebSocket upgrades; HandshakeDuration their time
	// from the request to the 101; Refused failed handshakes by status.
	Handshakes        int64
	HandshakeDuration Histogram
	Refused           map[int]int64
}

// statsFor returns the counters of the route named name, made once and
// kept across reloads.
func (h *Handler) statsFor(name string) *routeStats {
	h.statsMu.Lock()
	defer h.statsMu.Unlock()
	st := h.stats[name]
	if st == nil {
		st = &routeStats{name: name, refused: map[int]int64{}}
		h.stats[name] = st
	}
	return st
}

// metricName is the name r is counted and listed under: its name, or ""
// for a route the config did not name. Such a route's name ("routes[3]")
// is its position in the file, which a reload may give to another route,
// so its sessions and requests count under "" with every other unnamed
// route's, and with the requests no route matched.
func metricName(r *routes.Route) string {
	if strings.HasPrefix(r.ID, "match:") {
		return "" // package config's ID for a route it did not name
	}
	return r.Name
}

// routeStats returns the counters of r (nil: no route matched).
func (h *Handler) routeStats(r *routes.Route) *routeStats {
	if r == nil {
		return h.noRoute
	}
	if st := h.cur.Load().stats[r]; st != nil {
		return st
	}
	return h.statsFor(metricName(r)) // a request that outlived its config
}

// methodClass returns the index of m in MethodClasses.
func methodClass(m []byte) int {
	switch string(m) {
	case "GET":
		return 0
	case "HEAD":
		return 1
	case "POST":
		return 2
	case "PUT":
		return 3
	case "DELETE":
		return 4
	case "PATCH":
		return 5
	case "OPTIONS":
		return 6
	}
	return 7
}

// statusClass returns the index in StatusClasses of status (a status
// outside 100-599, which wsgate does not send, counts as 5xx).
func statusClass(status int) int {
	return min(max(status/100-1, 0), len(StatusClasses)-1)
}

// count counts one answered request of route r.
func (h *Handler) count(ctx *fasthttp.RequestCtx, r *routes.Route, status int, d time.Duration) {
	st := h.routeStats(r)
	st.requests[methodClass(ctx.Method())][statusClass(status)].Add(1)
	st.duration.observe(d)
	if status == 499 {
		st.clientGone.Add(1)
	}
}

// countHandshake counts the end of a WebSocket handshake on route r: an
// upgrade (status 101) or a refusal.
func (h *Handler) countHandshake(ctx *fasthttp.RequestCtx, r *routes.Route, status int) {
	st := h.routeStats(r)
	if status == fasthttp.StatusSwitchingProtocols {
		d := time.Since(ctx.Time())
		st.handshakes.Add(1)
		st.handshakeDuration.observe(d)
		h.count(ctx, r, status, d)
		return
	}
	st.refusedMu.Lock()
	st.refused[status]++
	st.refusedMu.Unlock()
}

// countUpstreamError counts an upstream error of route r.
func (h *Handler) countUpstreamError(r *routes.Route, err error) {
	h.routeStats(r).upstreamErrors[errorKind(err)].Add(1)
}

// errorKind returns the index in ErrorKinds of an upstream error.
func errorKind(err error) int {
	switch {
	case errors.Is(err, errNoTarget), errors.Is(err, fasthttp.ErrNoFreeConns):
		return 0
	case errors.Is(err, syscall.ECONNREFUSED):
		return 1
	case errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, fasthttp.ErrDialTimeout), isTimeout(err):
		return 2
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, errStaleConn):
		return 3
	}
	return 4
}

// Stats returns what every route's requests did, sorted by route name.
func (h *Handler) Stats() []RouteStats {
	h.statsMu.Lock()
	list := make([]*routeStats, 0, len(h.stats))
	for _, st := range h.stats {
		list = append(list, st)
	}
	h.statsMu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	out := make([]RouteStats, len(list))
	for i, st := range list {
		o := &out[i]
		o.Route = st.name
		for m := range st.requests {
			for c := range st.requests[m] {
				o.Requests[m][c] = st.requests[m][c].Load()
			}
		}
		o.Duration = st.duration.snapshot()
		for k := range st.upstreamErrors {
			o.UpstreamErrors[k] = st.upstreamErrors[k].Load()
		}
		o.Retries = st.retries.Load()
		o.ClientGone = st.clientGone.Load()
		o.RateLimited = st.rateLimited.Load()
		for i := range st.authRejected {
			o.AuthRejected[i] = st.authRejected[i].Load()
		}
		o.Handshakes = st.handshakes.Load()
		o.HandshakeDuration = st.handshakeDuration.snapshot()
		st.refusedMu.Lock()
		o.Refused = make(map[int]int64, len(st.refused))
		for k, v := range st.refused {
			o.Refused[k] = v
		}
		st.refusedMu.Unlock()
	}
	return out
}
