package upstream

import (
	"time"
)

// Result says how one try of a request on a target went wrong.
type Result uint8

const (
	// ConnectFailed: the connection could not be made (refused,
	// unreachable, TLS handshake failed); nothing was sent.
	ConnectFailed Result = iota + 1
	// ConnectTimedOut: the connect timed out; nothing was sent.
	ConnectTimedOut
	// Busy: the target had no free connection; nothing was sent. It is
	// not counted against the target.
	Busy
	// Stale: a pooled connection to the target turned out closed by the
	// target while idle; nothing was sent. It is not counted, and the
	// target may take the next try, on a new connection.
	Stale
	// Broken: the request was sent (or partly), then the connection
	// broke (reset, EOF, an answer that is not HTTP) before a response
	// head.
	Broken
	// TimedOut: the request was sent and no response head came in time.
	TimedOut
	// BadResponse: the target answered with something that is not a
	// valid answer (a 101 with a wrong Sec-WebSocket-Accept). Counted,
	// never retried.
	BadResponse
	// Aborted: the try ended for a reason that is not the target's (the
	// client's request body failed). It is not counted and not retried.
	Aborted
)

// maxTries bounds the targets one request is tried on (Config.Retries
// is at most maxTries-1).
const maxTries = 16

// Attempt walks one request through the targets of a Set: [Attempt.Next]
// picks a target by the set's policy, [Attempt.Failed] reports a try that
// went wrong and says whether another may follow, [Attempt.Responded]
// reports a response head. It lives on the caller's stack and allocates
// nothing; start it with [Set.Begin].
//
// Every target Next returns is held (it counts as load) until the caller
// reports Failed, or calls [Target.Release] or [Target.SessionClosed].
type Attempt struct {
	set    *Set
	tab    *table
	start  time.Time
	key    uint64  // fnv1a of the hash key
	hasKey bool    // the request carries the hash key
	sticky *Target // Cookie policy: the target the request's cookie names
	tried  [maxTries]*Target
	n      int
	again  bool // the last Failed allowed another try
}

// Begin starts an attempt on s for a request that arrived at now. key is
// the request's value of [Set.Key] (nil when absent): hashed by the Hash
// policy, looked up by the Cookie policy, ignored by the others.
func (s *Set) Begin(a *Attempt, now time.Time, key []byte) {
	a.set, a.tab, a.start = s, s.current(), now
	a.n, a.again, a.sticky, a.hasKey = 0, false, nil, false
	switch s.cfg.Policy {
	case Hash:
		if len(key) > 0 {
			a.key, a.hasKey = fnv1aBytes(fnvOffset, key), true
		}
	case Cookie:
		if len(key) > 0 {
			a.sticky = a.tab.byCookie[string(key)] // no allocation: map lookup
		}
	}
}

// Next returns the target for the next try, or nil when there is none:
// no target is in rotation and free, every one was tried, the retries are
// used up, or the try timeout has passed. After the first try it returns
// a target only if the last Failed allowed another.
func (a *Attempt) Next() *Target {
	if a.n > 0 {
		if !a.again || a.n > a.set.cfg.Retries || a.n >= maxTries {
			return nil
		}
		if d := a.set.cfg.TryTimeout; d > 0 && time.Since(a.start) >= d {
			return nil
		}
	}
	a.again = false
	var t *Target
	switch a.set.cfg.Policy {
	case LeastConn:
		t = a.leastConn()
	case Random:
		t = a.random()
	case Hash:
		if a.hasKey {
			t = a.hash()
		} else {
			t = a.roundRobin()
		}
	case Cookie:
		if s := a.sticky; s != nil && a.usable(s) && a.reserve(s) {
			t = s
		} else {
			t = a.roundRobin()
		}
	default:
		t = a.roundRobin()
	}
	if t != nil {
		a.tried[a.n] = t
		a.n++
	}
	return t
}

// Tries returns how many targets Next has handed out.
func (a *Attempt) Tries() int { return a.n }

// Failed reports that the try on t went wrong, and releases t. replayable
// says whether the request could be sent again whole: an idempotent
// method (or an Idempotency-Key) and a body held in memory. It returns
// whether another target may be tried: after a failed connect (nothing
// was sent) always, after a broken connection only when replayable, after
// a timeout never (one response timeout is already the client's wait).
// Next still returns nil when no try is left.
func (a *Attempt) Failed(t *Target, r Result, replayable bool, err error) (again bool) {
	t.st.active.Add(-1)
	a.set.failed(t, r, err)
	switch r {
	case Stale:
		a.again = true
		if a.n > 0 && a.tried[a.n-1] == t {
			a.tried[a.n-1] = nil // not tried: it had no chance (n still counts)
		}
	case ConnectFailed, ConnectTimedOut, Busy:
		a.again = true
	case Broken:
		a.again = replayable
	}
	return a.again
}

// Responded reports that t answered with a response head of the given
// status (for a WebSocket handshake, 101 or its refusal). The target stays
// held.
func (a *Attempt) Responded(t *Target, status int) {
	a.set.responded(t, status)
}

// StickyCookie returns the Set-Cookie value the response from t must
// carry under the Cookie policy, or "" when the request's cookie already
// names t or the policy is another. secure adds the Secure attribute
// (TLS listeners).
func (a *Attempt) StickyCookie(t *Target, secure bool) string {
	if a.set.cfg.Policy != Cookie || t == a.sticky {
		return ""
	}
	return t.StickyCookie(secure)
}

// usable reports whether t may take this try: in rotation and not tried
// yet. Capacity is checked by reserve.
func (a *Attempt) usable(t *Target) bool {
	if t.st.down.Load() != 0 {
		return false
	}
	for _, u := range a.tried[:a.n] {
		if u == t { // a nil entry (Stale) matches no target
			return false
		}
	}
	return true
}

// reserve counts a try on t, unless t is at max_connections.
func (a *Attempt) reserve(t *Target) bool {
	n := t.st.active.Add(1)
	if m := a.set.cfg.MaxConnections; m > 0 && n > int64(m) {
		t.st.active.Add(-1)
		return false
	}
	return true
}

// roundRobin takes the next usable target of the weighted schedule.
func (a *Attempt) roundRobin() *Target {
	seq, up := a.tab.seq, a.tab.up
	if len(seq) == 0 {
		return nil
	}
	start := a.set.rr.Add(1) - 1
	for k := range uint64(len(seq)) {
		t := up[seq[(start+k)%uint64(len(seq))]]
		if a.usable(t) && a.reserve(t) {
			return t
		}
	}
	return nil
}

// lessLoaded reports whether a carries less load than b relative to their
// weights (active/weight, compared without division).
func lessLoaded(a, b *Target, la, lb int64) bool {
	return la*int64(b.Weight) < lb*int64(a.Weight)
}

// maxFull bounds the targets one pick passes over because they are at
// max_connections before it falls back to round robin.
const maxFull = 8

// fullList holds targets found at max_connections during one pick.
type fullList struct {
	t [maxFull]*Target
	n int
}

func (f *fullList) has(t *Target) bool {
	for _, u := range f.t[:f.n] {
		if u == t {
			return true
		}
	}
	return false
}

// untilFree returns the best usable target by leastLoaded (byScore
// false) or highestScore (true), or when it is at max_connections the
// next best without it; after maxFull full targets it falls back to round
// robin. A flag, not a func value: through a func value the Attempt
// would escape to the heap.
func (a *Attempt) untilFree(byScore bool) *Target {
	var full fullList
	for full.n < maxFull {
		var best *Target
		if byScore {
			best = a.highestScore(&full)
		} else {
			best = a.leastLoaded(&full)
		}
		if best == nil {
			return nil
		}
		if a.reserve(best) {
			return best
		}
		full.t[full.n] = best
		full.n++
	}
	return a.roundRobin()
}

// leastConn takes the usable target with the least load per weight; ties
// go to a random one of the tied targets (reservoir sampling), so that
// targets with equal counts, a fresh one among them, share new sessions.
func (a *Attempt) leastConn() *Target { return a.untilFree(false) }

func (a *Attempt) leastLoaded(full *fullList) *Target {
	var best *Target
	var bestLoad int64
	ties := uint64(0)
	for _, t := range a.tab.up {
		if !a.usable(t) || full.has(t) {
			continue
		}
		l := t.st.active.Load()
		switch {
		case best == nil || lessLoaded(t, best, l, bestLoad):
			best, bestLoad, ties = t, l, 1
		case !lessLoaded(best, t, bestLoad, l): // a tie
			ties++
			if a.set.rand()%ties == 0 {
				best, bestLoad = t, l
			}
		}
	}
	return best
}

// random takes the less loaded of two usable targets picked at random
// (power of two random choices), falling back to leastConn when random
// picks keep hitting unusable targets.
func (a *Attempt) random() *Target {
	up := a.tab.up
	if len(up) == 0 {
		return nil
	}
	for range 4 {
		x := up[a.set.rand()%uint64(len(up))]
		y := up[a.set.rand()%uint64(len(up))]
		okx, oky := a.usable(x), a.usable(y)
		switch {
		case okx && oky:
			if lessLoaded(y, x, y.st.active.Load(), x.st.active.Load()) {
				x, y = y, x
			}
			if a.reserve(x) {
				return x
			}
			if x != y && a.reserve(y) {
				return y
			}
		case okx:
			if a.reserve(x) {
				return x
			}
		case oky:
			if a.reserve(y) {
				return y
			}
		}
	}
	return a.leastConn()
}

// hash takes the usable target with the highest rendezvous score for the
// key; when it is at max_connections, the next highest, as every replica
// would.
func (a *Attempt) hash() *Target { return a.untilFree(true) }

func (a *Attempt) highestScore(full *fullList) *Target {
	var best *Target
	var bestHash uint64
	var bestScore float64
	for _, t := range a.tab.up {
		if !a.usable(t) || full.has(t) {
			continue
		}
		h := hrwHash(a.key, t)
		if a.tab.equal {
			if best == nil || h > bestHash {
				best, bestHash = t, h
			}
			continue
		}
		if sc := hrwScore(h, t.Weight); best == nil || sc > bestScore {
			best, bestScore = t, sc
		}
	}
	return best
}
