package proxy

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
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
	sn := newSnapshot(&o)
	prev := h.cur.Swap(sn)

	h.mu.Lock()
	if h.draining {
		h.mu.Unlock()
		return ReloadResult{}
	}
	h.reloadDrain = drain
	stop := h.stopSchedules
	list := make([]*session, 0, len(h.sessions))
	for s := range h.sessions {
		list = append(list, s)
	}
	h.mu.Unlock()

	var res ReloadResult
	due := h.decide(sn, prev, list, drain, time.Now(), &res)
	if len(due) > 0 {
		h.schedule(due, stop, nil)
	}
	return res
}

// decide returns the closes a reload to sn schedules for the sessions of
// list, and counts every decision in res.
func (h *Handler) decide(sn, prev *snapshot, list []*session, drain time.Duration, now time.Time, res *ReloadResult) []scheduledClose {
	urls := map[*upstream.Set]map[string]bool{}
	var due []scheduledClose
	for _, s := range list {
		if s.scheduled.Load() {
			continue // an earlier reload already decided
		}
		action, r, affected := sn.fate(s, prev, urls)
		if !affected {
			res.Unchanged++
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
			code, reason = closeServiceRestart, "service restart"
		}
		if s.scheduled.CompareAndSwap(false, true) {
			due = append(due, scheduledClose{s: s, at: at, code: code, reason: reason})
		}
	}
	return due
}

// recheck decides the fate of a session whose handshake matched its
// route in a config that a reload has replaced since: Reload did not see
// it yet. A session of the current config needs nothing.
func (h *Handler) recheck(s *session) {
	sn := h.cur.Load()
	if sn.byID[s.route.ID] == s.route {
		return
	}
	h.mu.Lock()
	drain, stop := h.reloadDrain, h.stopSchedules
	h.mu.Unlock()
	var res ReloadResult
	if due := h.decide(sn, nil, []*session{s}, drain, time.Now(), &res); len(due) > 0 {
		h.schedule(due, stop, nil)
	}
}

// fate returns what a reload from prev (nil: not known) to sn does to
// s: whether s is affected, the action, and the route whose close code
// and reason to send. A route that is gone decides by its last version,
// in prev (which a reload that left the session unchanged may have
// changed since the session started). urls caches each set's target
// URLs.
func (sn *snapshot) fate(s *session, prev *snapshot, urls map[*upstream.Set]map[string]bool) (routes.ChangeAction, *routes.Route, bool) {
	old := s.route
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
	if s.target != nil && !in[s.target.URL] {
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

// scheduledClose is one session to close at a moment.
type scheduledClose struct {
	s      *session
	at     time.Time
	code   uint16
	reason string
}

// schedule closes each session of due at its moment, from one goroutine
// the handler owns, until every close is sent or stop is closed (a
// reload's schedule stops when the shutdown drain starts: that closes
// every session itself). Once hurry is closed, every close left is sent
// at once. Closes run in goroutines of their own: one may wait for a
// frame in flight to a slow client.
func (h *Handler) schedule(due []scheduledClose, stop, hurry <-chan struct{}) {
	slices.SortFunc(due, func(a, b scheduledClose) int { return a.at.Compare(b.at) })
	h.schedules.Go(func() {
		var closes sync.WaitGroup
		defer closes.Wait()
		timer := time.NewTimer(0)
		defer timer.Stop()
		<-timer.C
		hurried := false
		for i := 0; i < len(due); {
			if d := time.Until(due[i].at); d > 0 && !hurried {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-hurry:
					hurried = true
				case <-stop:
					return
				}
				continue
			}
			c := due[i]
			i++
			closes.Go(func() { c.s.closeClient(c.code, c.reason) })
		}
	})
}
