package proxy

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// ReloadResult counts what a reload did to the open WebSocket sessions.
type ReloadResult struct {
	// Unchanged sessions go on as if nothing happened.
	Unchanged int
	// Kept sessions were affected, but their on_change (or the upstream's
	// on_target_removed) is keep: they run on with their old settings.
	Kept int
	// Draining sessions will be closed at random moments within the
	// drain window.
	Draining int
	// Closed sessions were sent their close at once.
	Closed int
}

// Reload makes the config in o the one every request from now on is
// served with (one atomic swap: a request sees the old config or the new
// one, never a mix), then decides the fate of every open WebSocket
// session. A session is unchanged when its route still exists (the same
// routes.Route.ID), nothing that governs a live session changed
// (enabled, upstream name, max_message_size, idle_timeout, origins) and
// its target is still in the upstream. An affected session gets its
// route's on_change (the new route's, or the last version of a route that is
// gone); one whose only change is that its target left gets the
// upstream's on_target_removed. drain closes it at a random moment
// within drain, close at once; both send the route's close code and
// reason to the client and 1001 to the backend.
//
// o.AccessLog and o.Logger are not swapped. The caller keeps the old
// config's upstream sets alive (Close stops only their goroutines) and
// starts the new ones before calling Reload.
func (h *Handler) Reload(o Options, drain time.Duration) ReloadResult {
	sn := newSnapshot(&o, h)
	prev := h.cur.Swap(sn)
	h.pruneJWKS() // the JWK Set URLs sn no longer uses
	h.pruneRates(sn)

	if h.reg.Draining() {
		return ReloadResult{}
	}
	h.reloadDrain.Store(int64(drain))
	var res ReloadResult
	h.reg.Schedule(h.decide(sn, prev, h.reg.List(), drain, time.Now(), &res))
	return res
}

// decide returns the closes a reload to sn schedules for the sessions of
// list, and counts every decision in res.
func (h *Handler) decide(sn, prev *snapshot, list []*wsrelay.Session, drain time.Duration, now time.Time, res *ReloadResult) []wsrelay.ScheduledClose {
	urls := map[*upstream.Set]map[string]bool{}
	var due []wsrelay.ScheduledClose
	for _, s := range list {
		if s.Decided() {
			continue // an earlier reload already decided
		}
		action, r, affected := sn.fate(s, prev, urls)
		if !affected {
			res.Unchanged++
			// Keepalive, rate and UTF-8 settings apply to the
			// sessions that go on: a change to them drops nothing.
			if p := sn.policy[sn.byID[s.Tag().(*wsTag).route.ID]]; p != nil {
				s.SetPolicy(p)
			}
			continue
		}
		at := now
		switch action {
		case routes.Keep:
			res.Kept++
			continue
		case routes.Close:
			res.Closed++
		default:
			res.Draining++
			if drain > 0 {
				at = now.Add(time.Duration(rand.Int64N(int64(drain))))
			}
		}
		code, reason := r.WebSocket.CloseCode, r.WebSocket.CloseReason
		if code == 0 { // a route built without package config
			code, reason = wsrelay.CloseServiceRestart, "service restart"
		}
		if s.Decide() {
			due = append(due, wsrelay.ScheduledClose{Session: s, At: at, Code: code, Reason: reason})
		}
	}
	return due
}

// recheck decides the fate of a session whose handshake matched its
// route in a config that a reload has replaced since: Reload did not see
// it yet. A session of the current config needs nothing.
func (h *Handler) recheck(s *wsrelay.Session) {
	sn := h.cur.Load()
	if r := s.Tag().(*wsTag).route; sn.byID[r.ID] == r {
		return
	}
	var res ReloadResult
	h.reg.Schedule(h.decide(sn, nil, []*wsrelay.Session{s}, time.Duration(h.reloadDrain.Load()), time.Now(), &res))
}

// fate returns what a reload from prev (nil: not known) to sn does to
// s: whether s is affected, the action, and the route whose close code
// and reason to send. A route that is gone decides by its last version,
// in prev (which a reload that left the session unchanged may have
// changed since the session started). urls caches each set's target
// URLs.
func (sn *snapshot) fate(s *wsrelay.Session, prev *snapshot, urls map[*upstream.Set]map[string]bool) (routes.ChangeAction, *routes.Route, bool) {
	tag := s.Tag().(*wsTag)
	old := tag.route
	r := sn.byID[old.ID]
	if r == nil {
		last := old
		if prev != nil && prev.byID[old.ID] != nil {
			last = prev.byID[old.ID]
		}
		return last.WebSocket.OnChange, last, true
	}
	if !sameLive(old, r) {
		return r.WebSocket.OnChange, r, true
	}
	set := sn.sets[r.Upstream]
	in := urls[set]
	if in == nil {
		in = map[string]bool{}
		for _, t := range set.Targets() {
			in[t.URL] = true
		}
		urls[set] = in
	}
	if tag.target != nil && !in[tag.target.URL] {
		action, _ := routes.ParseChangeAction(set.Config().OnTargetRemoved)
		return action, r, true
	}
	return routes.Drain, nil, false
}

// sameLive reports whether a session started on route a may go on under
// route b: what governs a live session is the same.
func sameLive(a, b *routes.Route) bool {
	return a.Upstream != nil && b.Upstream != nil && a.Upstream.Name == b.Upstream.Name &&
		a.WebSocket.Enabled == b.WebSocket.Enabled &&
		a.WebSocket.MaxMessageSize == b.WebSocket.MaxMessageSize &&
		a.WebSocket.IdleTimeout == b.WebSocket.IdleTimeout &&
		slices.Equal(a.WebSocket.Origins, b.WebSocket.Origins)
}

// wsTag is what the proxy attaches to each session: what a reload
// judges it by.
type wsTag struct {
	route  *routes.Route
	target *upstream.Target
}
