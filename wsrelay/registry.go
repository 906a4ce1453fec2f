package wsrelay

import (
	"cmp"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a [Registry].
type Options struct {
	// Logger receives the sessions' logs; nil means slog.Default().
	Logger *slog.Logger
	// CloseWait bounds each close handshake; 0 means 5s. Tests raise it
	// far above their own hang guards, so that a close seen in time can
	// only have come from the path under test.
	CloseWait time.Duration
}

// Registry owns the live sessions of one process: it counts handshakes in
// progress, registers each session until it ends, drains them all on
// shutdown and runs the close schedules of reloads. It is safe for
// concurrent use.
type Registry struct {
	log       *slog.Logger
	closeWait time.Duration

	mu        sync.Mutex
	sessions  map[uint64]*Session // guarded by mu: by id
	routes    map[routeKey]*Route // guarded by mu: every route a session used, by name
	closes    []Closed            // guarded by mu: the last maxCloses ended sessions, a ring
	closesAt  int                 // guarded by mu: where the next goes in closes
	upgrading int                 // guarded by mu: handshakes in progress
	draining  bool                // guarded by mu
	drained   int                 // guarded by mu: sessions the drain closes, counted as they come
	changed   chan struct{}       // guarded by mu: closed when the two above shrink

	// stopSchedules is closed when the shutdown drain starts: reloads'
	// close schedules stop. Guarded by mu.
	stopSchedules chan struct{}
	// hurry is closed by Hurry: the drain sends every close left now.
	hurry     chan struct{}
	hurryOnce sync.Once
	// schedules are the goroutines of close schedules (see Schedule).
	schedules sync.WaitGroup

	// nextID numbers sessions; it starts at a random value so that the
	// ids of a process and of the one it hands over to do not collide.
	nextID atomic.Uint64

	// handOffs counts WebSocket legs the poller gave back to a pump
	// goroutine (see poller.handOff): low while the poller relays.
	handOffs atomic.Int64
}

// NewRegistry returns an empty registry.
func NewRegistry(o Options) *Registry {
	r := &Registry{
		log:           o.Logger,
		closeWait:     o.CloseWait,
		sessions:      map[uint64]*Session{},
		routes:        map[routeKey]*Route{},
		changed:       make(chan struct{}),
		stopSchedules: make(chan struct{}),
		hurry:         make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.closeWait <= 0 {
		r.closeWait = closeWait
	}
	r.nextID.Store(uint64(rand.Uint32() >> 6))
	return r
}

// Route is what the sessions of one route share: its names and what its
// ended sessions carried. Get one from [Registry.Route].
type Route struct {
	Name     string
	Upstream string

	totals routeTotals // guarded by the registry's mu
	// What the policies did to each side (see Actions).
	clientActions, backendActions actionCounts
}

// Route returns the route named name on upstream: the same one for the
// same names, across reloads, so that its counts go on.
func (r *Registry) Route(name, upstream string) *Route {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := routeKey{name, upstream}
	rt := r.routes[k]
	if rt == nil {
		rt = &Route{Name: name, Upstream: upstream}
		rt.totals.ended = map[EndKey]int64{}
		r.routes[k] = rt
	}
	return rt
}

type routeKey struct{ name, upstream string }

// maxCloses is how many ended sessions Closes remembers.
const maxCloses = 50

// Config is what one session is made of, besides its connections.
type Config struct {
	Route *Route
	// Target is the backend's URL, scheme://host:port.
	Target string
	// Client is the client's address.
	Client      string
	Subprotocol string
	// Deflate: permessage-deflate was negotiated (RSV1 allowed).
	Deflate bool
	// MaxMessage caps a message's size (0: no limit); Idle ends a session
	// without frames either way for that long (0: never); Write bounds
	// each write to a peer.
	MaxMessage int64
	Idle       time.Duration
	Write      time.Duration
	// Policy is what wsgate enforces on the session beyond RFC 6455;
	// nil: nothing.
	Policy *Policy
	// Expires is when the credentials the session was opened with run
	// out (a JWT's exp, plus a grace): the client then gets the Policy's
	// ExpiryCode and the backend 1001. Zero: never.
	Expires time.Time
	// OnEnd is called once when the session ends (or is abandoned).
	OnEnd func()
	// Tag is the caller's: [Session.Tag] returns it.
	Tag any
}

// NewSession returns a session on backend (early: bytes already read from
// it), not yet registered: pass it to EndUpgrade, then Run it with the
// client's connection.
func (r *Registry) NewSession(c Config, backend net.Conn, early []byte) *Session {
	s := &Session{
		reg:         r,
		id:          r.nextID.Add(1),
		route:       c.Route,
		remote:      c.Client,
		target:      c.Target,
		subprotocol: c.Subprotocol,
		onEnd:       c.OnEnd,
		tag:         c.Tag,
		start:       time.Now().UnixNano(),
		deflate:     c.Deflate,
		maxMessage:  c.MaxMessage,
		idle:        c.Idle,
		write:       c.Write,
		backend:     newLeg(backend, early, true),
	}
	s.pol.Store(cmp.Or(c.Policy, noPolicy))
	if !c.Expires.IsZero() {
		s.expires = max(c.Expires.UnixNano(), 1)
	}
	return s
}

// ID returns the session's id: short, unique in the process.
func (s *Session) ID() string { return strconv.FormatUint(s.id, 36) }

// Tag returns what the caller attached (Config.Tag).
func (s *Session) Tag() any { return s.tag }

// Decide marks the session as decided by a reload or a drain: it reports
// false if that had happened already, so that a later reload does not
// decide again.
func (s *Session) Decide() bool { return s.scheduled.CompareAndSwap(false, true) }

// Decided reports whether Decide was called.
func (s *Session) Decided() bool { return s.scheduled.Load() }

// Abandon closes the backend connection of a session that was never run
// and removes it: the client connection never came.
func (s *Session) Abandon() {
	_ = s.backend.conn.Close()
	s.reg.remove(s)
}

// Len returns the number of live sessions.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// List returns the live sessions, in no particular order.
func (r *Registry) List() []*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	return list
}

// Draining reports whether Drain has started.
func (r *Registry) Draining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// BeginUpgrade counts a handshake in progress; it fails while draining.
func (r *Registry) BeginUpgrade() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining {
		return false
	}
	r.upgrading++
	return true
}

// EndUpgrade ends a handshake; s is the session it produced, or nil. It
// reports whether s was registered while no drain runs (a drain closes
// the session itself).
func (r *Registry) EndUpgrade(s *Session) bool {
	r.mu.Lock()
	r.upgrading--
	draining := r.draining
	if s != nil {
		r.sessions[s.id] = s
		s.route.totals.opened++
		if draining {
			r.drained++
			s.goAway() // not started yet: Run sends the 1001
		}
	}
	r.signalLocked()
	r.mu.Unlock()
	return s != nil && !draining
}

// remove ends s's registration and calls its OnEnd. A session is removed
// once, however it ends (its last pump, a cut before it started, or the
// abandon timer); a second call does nothing.
func (r *Registry) remove(s *Session) {
	if !s.removed.CompareAndSwap(false, true) {
		return
	}
	if s.onEnd != nil {
		s.onEnd()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.id] == s {
		delete(r.sessions, s.id)
		r.endedLocked(s)
	}
	r.signalLocked()
}

// endedLocked adds what the ended session s carried to its route's
// totals and to the recent closes.
func (r *Registry) endedLocked(s *Session) {
	t := &s.route.totals
	c := s.clientLeg()
	if c != nil {
		t.fromClient.add(c)
	}
	t.fromBackend.add(s.backend)
	end := time.Now()
	t.observeDuration(end.Sub(time.Unix(0, s.start)))
	cl := Closed{
		ID: s.ID(), Route: s.route.Name, Upstream: s.route.Upstream, Target: s.target, Client: s.remote,
		Started: time.Unix(0, s.start), Ended: end,
		BackendCode: s.backend.closeCode,
		FromBackend: Flow{Messages: s.backend.messages.Load(), Bytes: s.backend.bytes.Load()},
	}
	if c != nil {
		cl.ClientCode = c.closeCode
		cl.FromClient = Flow{Messages: c.messages.Load(), Bytes: c.bytes.Load()}
	}
	s.endMu.Lock()
	by, code, reason := s.closedBy, s.firstCode, s.firstReason
	s.endMu.Unlock()
	if by == closedByNone { // never started, or cut
		by, code = closedByWsgate, closeAbnormal
	}
	cl.ClosedBy, cl.Reason = by.String(), reason
	t.ended[EndKey{Code: code, By: by.String()}]++
	if len(r.closes) < maxCloses {
		r.closes = append(r.closes, cl)
	} else {
		r.closes[r.closesAt] = cl
	}
	r.closesAt = (r.closesAt + 1) % maxCloses
}

// Closes returns the sessions that ended last, the most recent first.
func (r *Registry) Closes() []Closed {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Closed, 0, len(r.closes))
	for i := range len(r.closes) {
		out = append(out, r.closes[(r.closesAt-1-i+maxCloses)%maxCloses])
	}
	return out
}

func (r *Registry) signalLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Drain refuses new WebSocket upgrades, sends close 1001 "going away" to
// both legs of every session, each at a random moment within spread (0:
// all at once) so that clients do not reconnect in one herd, and waits
// until all sessions have ended or ctx is done. Then it cuts what is left
// and returns ctx.Err(), so a forced drain is visible to the caller.
// Reloads' close schedules stop: this closes every session.
func (r *Registry) Drain(ctx context.Context, spread time.Duration) (DrainResult, error) {
	r.mu.Lock()
	if !r.draining {
		r.draining = true
		close(r.stopSchedules)
	}
	r.drained = len(r.sessions)
	now := time.Now()
	due := make([]ScheduledClose, 0, len(r.sessions))
	for _, s := range r.sessions {
		at := now
		if spread > 0 {
			at = now.Add(time.Duration(rand.Int64N(int64(spread))))
		}
		due = append(due, ScheduledClose{Session: s, At: at, Code: closeGoingAway, Reason: "going away"})
	}
	r.mu.Unlock()

	stop := make(chan struct{})
	r.schedule(due, stop, r.hurry)
	defer func() {
		close(stop)
		r.schedules.Wait()
	}()
	for {
		r.mu.Lock()
		n := len(r.sessions) + r.upgrading
		ch := r.changed
		r.mu.Unlock()
		if n == 0 {
			r.mu.Lock()
			defer r.mu.Unlock()
			return DrainResult{Closed: r.drained}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			r.mu.Lock()
			cut := len(r.sessions)
			total := r.drained
			r.mu.Unlock()
			r.forceClose()
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
func (r *Registry) Hurry() { r.hurryOnce.Do(func() { close(r.hurry) }) }

// forceClose cuts every session's connections and waits for the sessions
// to end (they do at once: their pumps fail on the closed connections).
func (r *Registry) forceClose() {
	for {
		r.mu.Lock()
		n := len(r.sessions)
		ch := r.changed
		for _, s := range r.sessions {
			s.closeConns()
		}
		r.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-time.After(r.closeWait):
			r.log.Warn("sessions did not end after their connections were closed", "sessions", n)
			return
		}
	}
}

// ScheduledClose is one session to close at a moment: the client gets
// Code and Reason, the backend 1001.
type ScheduledClose struct {
	Session *Session
	At      time.Time
	Code    uint16
	Reason  string
}

// Schedule closes each session of due at its moment, from one goroutine
// the registry owns, until every close is sent or the shutdown drain
// starts (which closes every session itself). It does nothing once the
// drain has started.
func (r *Registry) Schedule(due []ScheduledClose) {
	r.mu.Lock()
	draining, stop := r.draining, r.stopSchedules
	r.mu.Unlock()
	if draining || len(due) == 0 {
		return
	}
	r.schedule(due, stop, nil)
}

// schedule closes each session of due at its moment, from one goroutine,
// until every close is sent or stop is closed. Once hurry is closed,
// every close left is sent at once. A close is sent from the schedule's
// goroutine when neither leg has a write in progress (CloseClientSoon),
// else from a goroutine of its own, which may wait for a frame in flight
// to a slow client: thousands of sessions closing at once do not take a
// goroutine each.
func (r *Registry) schedule(due []ScheduledClose, stop, hurry <-chan struct{}) {
	slices.SortFunc(due, func(a, b ScheduledClose) int { return a.At.Compare(b.At) })
	r.schedules.Go(func() {
		var closes sync.WaitGroup
		defer closes.Wait()
		timer := time.NewTimer(0)
		defer timer.Stop()
		<-timer.C
		hurried := false
		for i := 0; i < len(due); {
			if d := time.Until(due[i].At); d > 0 && !hurried {
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
			if !c.Session.CloseClientSoon(c.Code, c.Reason) {
				closes.Go(func() { c.Session.CloseClient(c.Code, c.Reason) })
			}
		}
	})
}

// HandOffs counts the legs the poller gave back to a pump goroutine since
// the start: low while the poller relays.
func (r *Registry) HandOffs() int64 { return r.handOffs.Load() }

// Parked counts the legs of r's sessions that wait in a poller, without a
// goroutine.
func (r *Registry) Parked() int {
	ps := pollersUp.Load()
	if ps == nil {
		return 0 // no session yet
	}
	n := 0
	for _, p := range *ps {
		p.mu.Lock()
		for _, page := range p.slots.pages {
			for _, pp := range page {
				if pp.src != nil && pp.s.reg == r {
					n++
				}
			}
		}
		p.mu.Unlock()
	}
	return n
}

// Closing reports whether the session's closing handshake has started or
// its connections are closed.
func (s *Session) Closing() bool { return s.closing() }
