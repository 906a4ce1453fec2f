package proxy

import (
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/ratelimit"
	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/wsrelay"
)

// sessionLimits counts the WebSocket sessions of one route, handshakes in
// progress included, for websocket.max_sessions and max_sessions_per_ip.
// There is one per route ID, kept across reloads, so that the sessions a
// route had under the previous config count under the new one.
type sessionLimits struct {
	mu    sync.Mutex
	total int                // guarded by mu
	perIP map[netip.Addr]int // guarded by mu
}

// sessionSlot is one admitted handshake's place in its route's counts,
// given back by release when the handshake fails or the session ends.
type sessionSlot struct {
	l    *sessionLimits
	ip   netip.Addr
	once sync.Once
}

// limitsFor returns the counts of the route with the given ID.
func (h *Handler) limitsFor(id string) *sessionLimits {
	h.limitsMu.Lock()
	defer h.limitsMu.Unlock()
	l := h.limits[id]
	if l == nil {
		l = &sessionLimits{perIP: map[netip.Addr]int{}}
		h.limits[id] = l
	}
	return l
}

// admitSession applies the route's session limits to a handshake, before
// the backend is dialled. It returns the slot to release (nil when the
// route has no limit: nothing is counted then) or the status to refuse
// with: 503 when the route is full, 429 when the client's address is.
func (h *Handler) admitSession(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route) (*sessionSlot, int) {
	maxTotal, maxPerIP := r.WebSocket.MaxSessions, r.WebSocket.MaxSessionsPerIP
	if maxTotal <= 0 && maxPerIP <= 0 {
		return nil, 0
	}
	ip := clientAddr(ctx, sn.trusted)
	l := h.limitsFor(r.ID)
	l.mu.Lock()
	defer l.mu.Unlock()
	if maxTotal > 0 && l.total >= maxTotal {
		return nil, fasthttp.StatusServiceUnavailable
	}
	if maxPerIP > 0 && l.perIP[ip] >= maxPerIP {
		return nil, fasthttp.StatusTooManyRequests
	}
	l.total++
	l.perIP[ip]++
	return &sessionSlot{l: l, ip: ip}, 0
}

// release gives the slot back, once; a nil slot is a no-op.
func (s *sessionSlot) release() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		s.l.mu.Lock()
		defer s.l.mu.Unlock()
		s.l.total--
		if s.l.perIP[s.ip]--; s.l.perIP[s.ip] <= 0 {
			delete(s.l.perIP, s.ip)
		}
	})
}

// clientAddr returns the client's address: the peer's, or, when the peer
// is a trusted proxy, the right-most X-Forwarded-For address that is not
// itself a trusted proxy (what the last trusted hop saw). An element that
// is not an IP address stops the walk: the peer stands in.
func clientAddr(ctx *fasthttp.RequestCtx, trusted []netip.Prefix) netip.Addr {
	peer := peerAddr(ctx)
	if !isTrusted(peer, trusted) {
		return peer
	}
	var elems []string
	for _, line := range ctx.Request.Header.PeekAll("X-Forwarded-For") {
		for e := range strings.SplitSeq(string(line), ",") {
			if e = strings.TrimSpace(e); e != "" {
				elems = append(elems, e)
			}
		}
	}
	for i := len(elems) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(elems[i])
		if err != nil {
			return peer
		}
		if a = a.Unmap(); !isTrusted(a, trusted) {
			return a
		}
	}
	return peer
}

// policyOf is the wsrelay.Policy of a route's WebSocket settings.
func policyOf(r *routes.Route) *wsrelay.Policy {
	ws := &r.WebSocket
	p := &wsrelay.Policy{
		PingInterval: ws.PingInterval,
		PingTimeout:  ws.PingTimeout,
		UserTimeout:  ws.TCPUserTimeout,
		MessageRate:  ratelimit.NewLimit(ws.MaxMessagesPerSecond, ws.MessageBurst),
		DropOverRate: ws.DropOverRate,
		ValidateUTF8: ws.ValidateUTF8,
	}
	if r.Auth != nil && r.Auth.JWT != nil {
		p.ExpiryCode, p.ExpiryReason = r.Auth.JWT.ExpiryCode, r.Auth.JWT.ExpiryReason
	}
	return p
}

// ratesFor returns the request rate limit of route r: the one its ID had
// under the previous config when the limit is the same, so that a
// reload does not refill every bucket; a new one otherwise.
func (h *Handler) ratesFor(r *routes.Route) *ratelimit.Keyed[netip.Addr] {
	l := ratelimit.NewLimit(r.Limits.RequestsPerSecondPerIP, r.Limits.RequestBurst)
	h.limitsMu.Lock()
	defer h.limitsMu.Unlock()
	k := h.rates[r.ID]
	if k == nil || k.Limit() != l {
		k = ratelimit.NewKeyed[netip.Addr](l)
		h.rates[r.ID] = k
	}
	return k
}

// tooManyRequests answers 429 with the seconds until the client's next
// request would be allowed (at least 1) in Retry-After.
func tooManyRequests(ctx *fasthttp.RequestCtx, retry time.Duration) {
	plainError(ctx, fasthttp.StatusTooManyRequests, "too many requests")
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
}

// pruneRates forgets the request rate limits of routes sn does not
// limit (removed, or their limit taken off).
func (h *Handler) pruneRates(sn *snapshot) {
	keep := make(map[string]bool, len(sn.rates))
	for r := range sn.rates {
		keep[r.ID] = true
	}
	h.limitsMu.Lock()
	defer h.limitsMu.Unlock()
	for id := range h.rates {
		if !keep[id] {
			delete(h.rates, id)
		}
	}
}
