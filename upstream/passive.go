package upstream

import (
	"fmt"
	"time"
)

// Kinds of failure, for the log lines that say a target started failing
// (state.failing).
const (
	failRefused uint32 = 1 + iota
	failTimeout
	failBroken
)

var failMessages = [...]string{
	failRefused: "target refusing connections",
	failTimeout: "target timing out",
	failBroken:  "target breaking connections",
}

// failed records a failed try on t: one log line when the target starts
// failing in a new way, and a failure for passive ejection.
func (s *Set) failed(t *Target, r Result, err error) {
	var kind uint32
	switch r {
	case ConnectFailed:
		kind = failRefused
	case ConnectTimedOut, TimedOut:
		kind = failTimeout
	case Broken, BadResponse:
		kind = failBroken
	default:
		return // Busy and Stale are not the target's fault
	}
	why := "unknown error"
	if err != nil {
		why = err.Error()
	}
	if old := t.st.failing.Swap(kind); old != kind {
		s.log.Warn(failMessages[kind], "target", t.URL, "error", why)
	}
	s.countFailure(t, why)
}

// responded records a response head from t.
func (s *Set) responded(t *Target, status int) {
	if t.st.failing.Load() != 0 && t.st.failing.Swap(0) != 0 {
		s.log.Info("target answering again", "target", t.URL, "status", status)
	}
	if p := s.cfg.Passive; p != nil && p.Count5xx && status >= 500 && status <= 599 {
		s.countFailure(t, fmt.Sprintf("status %d", status))
	}
}

// countFailure counts a failure in t's window and ejects t when the
// window holds Passive.Failures of them. The window is fixed: it starts
// at the first failure after the previous window ended.
func (s *Set) countFailure(t *Target, why string) {
	p := s.cfg.Passive
	if p == nil {
		return
	}
	now := time.Now().UnixNano()
	st := t.st
	if ws := st.winStart.Load(); now-ws >= int64(p.Window) {
		if st.winStart.CompareAndSwap(ws, now) {
			st.winFails.Store(0)
		}
	}
	// >=, not ==: a count past the threshold (an ejection the cap held
	// back, failures of requests still in flight) tries again; eject does
	// nothing for a target already out.
	if n := st.winFails.Add(1); n >= int32(p.Failures) {
		s.eject(t, now, why, n == int32(p.Failures))
	}
}

// eject takes t out of rotation for Passive.EjectFor, doubled for each
// ejection in a row, unless that would put more than MaxEjectPercent of
// the targets out of rotation.
// first says the window just reached the threshold: the line that says the
// cap held an ejection back is written then only, not on every failure.
func (s *Set) eject(t *Target, now int64, why string, first bool) {
	p := s.cfg.Passive
	s.mu.Lock()
	defer s.mu.Unlock()
	st := t.st
	if st.down.Load()&downEjected != 0 {
		return
	}
	all := s.currentLocked().all
	down := 0
	for _, u := range all {
		if u.st.down.Load() != 0 {
			down++
		}
	}
	if st.down.Load() == 0 {
		down++ // t itself, if it is not already out (unhealthy)
	}
	if down*100 > p.MaxEjectPercent*len(all) {
		if !first {
			return
		}
		down-- // the others
		s.log.Warn("target not ejected: max_eject_percent reached", "target", t.URL,
			"reason", why, "out_of_rotation", down, "targets", len(all), "max_eject_percent", p.MaxEjectPercent)
		return
	}
	// The state may be shared with the set of another config (a reload):
	// its ejection mutex orders the two sets' ejections and readmissions.
	st.ejectMu.Lock()
	if st.down.Load()&downEjected != 0 {
		st.ejectMu.Unlock()
		return
	}
	if end := st.lastEjectEnd.Load(); end != 0 && now-end > int64(p.MaxEjectFor) {
		st.ejections.Store(0) // back long enough: the doubling starts over
	}
	n := int(st.ejections.Add(1))
	st.ejectedTotal.Add(1)
	d := p.EjectFor
	for i := 1; i < n && d < p.MaxEjectFor; i++ {
		d *= 2
	}
	d = min(d, p.MaxEjectFor)
	st.ejectedUntil.Store(now + int64(d))
	st.setDown(downEjected)
	st.ejectMu.Unlock()
	st.winFails.Store(0)
	st.winStart.Store(now)
	s.rebuild()
	s.log.Warn("target unhealthy", "target", t.URL,
		"reason", fmt.Sprintf("ejected: %d failures within %s (last: %s)", p.Failures, p.Window, why),
		"eject_ms", d.Milliseconds(), "ejections", n)
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// readmit puts an ejected target back into rotation. s.mu is held.
func (s *Set) readmit(t *Target, now int64, reason string) {
	st := t.st
	st.ejectMu.Lock()
	if !st.clearDown(downEjected) {
		st.ejectMu.Unlock()
		return
	}
	st.ejectedUntil.Store(0)
	st.lastEjectEnd.Store(now)
	st.ejectMu.Unlock()
	s.rebuild()
	if st.down.Load() == 0 {
		s.log.Info("target healthy", "target", t.URL, "reason", reason)
	}
}

// ejectLoop readmits ejected targets when their time is up. It runs with
// Passive set, from Start until Close.
func (s *Set) ejectLoop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// At least every eject_for: a target may have been ejected by
		// the set of another config sharing its state (a reload), which
		// wakes only its own ejector.
		wait := min(s.expireEjections(), s.cfg.Passive.EjectFor)
		timer.Reset(wait)
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
		case <-timer.C:
		}
	}
}

// expireEjections readmits every target whose ejection has ended and
// returns the time until the next one ends (an hour when none is
// ejected).
func (s *Set) expireEjections() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now().UnixNano()
	next := int64(time.Hour)
	for _, t := range s.currentLocked().all {
		if t.st.down.Load()&downEjected == 0 {
			continue
		}
		until := t.st.ejectedUntil.Load()
		if until <= now {
			s.readmit(t, now, "ejection ended")
			continue
		}
		next = min(next, until-now)
	}
	return time.Duration(next)
}
