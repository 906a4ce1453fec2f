package upstream

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a [Set].
type Options struct {
	// Logger receives the set's logs; nil means slog.Default().
	Logger *slog.Logger
	// Previous is the set of the same upstream in the config being
	// replaced, if any: targets with the same URL keep its counts,
	// health and ejections, and what was attached to them (pooled
	// connections) when the settings connections depend on are the
	// same (timeouts, max_connections, TLS).
	Previous *Set
	// Resolver resolves host names for discovery; nil means the system
	// resolver, or Config.Resolvers when set.
	Resolver Resolver
	// Rand returns random numbers for the random choices of the
	// policies; nil means math/rand/v2. Tests set a seeded source.
	Rand func() uint64
}

// Set is the live form of one upstream: its targets, their state and the
// goroutines that keep it (health checkers, the ejector, the resolver),
// which [Set.Start] starts and [Set.Close] stops. It is safe for
// concurrent use.
type Set struct {
	cfg       *Config
	log       *slog.Logger
	rand      func() uint64
	resolver  Resolver
	cookieKey []byte

	tab atomic.Pointer[table]
	rr  atomic.Uint64 // round-robin position

	mu       sync.Mutex
	states   map[string]*state              // guarded by mu: by URL
	checkers map[*Target]context.CancelFunc // guarded by mu
	started  bool                           // guarded by mu
	closed   bool                           // guarded by mu

	ctx    context.Context // done when Close is called
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the set
	kick   chan struct{}  // wakes the ejector: an ejection changed
	names  []*name        // resolver goroutine only, after Start
}

// table is the immutable view of the targets one request chooses from;
// a change (health, ejection, discovery) builds a new one.
type table struct {
	gen      uint64             // downGen when built
	all      []*Target          // every target, in config order
	up       []*Target          // the targets in rotation
	seq      []uint32           // round-robin order over up, by weight
	equal    bool               // every target in up has the same weight
	byCookie map[string]*Target // Cookie policy: cookie value → target
}

// New returns the set for cfg. It starts no goroutine: see [Set.Start].
// Targets whose host is a name are dialled by name, unless discovery is
// on (Config.ResolveEvery), when they appear once Start has resolved them.
func New(cfg *Config, o Options) *Set {
	s := &Set{
		cfg:      cfg,
		log:      o.Logger,
		rand:     o.Rand,
		resolver: o.Resolver,
		states:   map[string]*state{},
		checkers: map[*Target]context.CancelFunc{},
		kick:     make(chan struct{}, 1),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("upstream", cfg.Name)
	if s.rand == nil {
		s.rand = rand.Uint64
	}
	if s.resolver == nil {
		s.resolver = systemResolver(cfg.Resolvers)
	}
	s.cookieKey = cookieKey(cfg)
	if p := o.Previous; p != nil {
		p.mu.Lock()
		for url, st := range p.states {
			s.states[url] = st
			// Without checks (or ejection) in this config, nothing
			// would ever bring the target back: it is healthy.
			if cfg.Health == nil {
				st.clearDown(downUnhealthy)
			}
			if cfg.Passive == nil {
				st.ejectMu.Lock()
				if st.clearDown(downEjected) {
					st.ejectedUntil.Store(0)
				}
				st.ejectMu.Unlock()
			}
		}
		p.mu.Unlock()
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	var all []*Target
	for _, tc := range cfg.Targets {
		if cfg.ResolveEvery > 0 && !isIP(tc.Host) {
			s.names = append(s.names, &name{host: tc.Host, tcs: []TargetConfig{tc}})
			continue
		}
		all = append(all, s.newTarget(tc, tc.Addr()))
	}
	if p := o.Previous; p != nil && sameConnections(p.cfg, cfg) {
		// Discovered targets are new objects at each lookup: they
		// attach afresh (the pools of the previous set's discovered
		// targets close when idle).
		old := map[string]*Target{}
		for _, t := range p.tab.Load().all {
			old[t.URL] = t
		}
		for _, t := range all {
			if o := old[t.URL]; o != nil && o.Host == t.Host {
				t.ext.Store(o.ext.Load())
			}
		}
	}
	s.names = mergeNames(s.names)
	s.mu.Lock()
	s.setTargets(all)
	if len(s.names) == 0 {
		// With discovery, the states of discovered addresses wait for
		// the first lookup (Start), which prunes.
		s.pruneStates()
	}
	s.mu.Unlock()
	return s
}

// sameConnections reports whether connections made for a target of a
// may serve the same target of b.
func sameConnections(a, b *Config) bool {
	return a.ConnectTimeout == b.ConnectTimeout && a.ResponseTimeout == b.ResponseTimeout &&
		a.MaxConnections == b.MaxConnections && (a.TLS == nil) == (b.TLS == nil) && a.TLSSource == b.TLSSource
}

// newTarget returns the target for tc reached at addr, with the state
// its URL already has, if any.
func (s *Set) newTarget(tc TargetConfig, addr string) *Target {
	t := &Target{
		Scheme: tc.Scheme,
		Addr:   addr,
		URL:    tc.Scheme + "://" + addr,
		Host:   tc.Host,
		Weight: max(tc.Weight, 1),
		set:    s,
	}
	t.hrw = fnv1a(fnvOffset, t.URL)
	st := s.states[t.URL]
	if st == nil {
		st = &state{url: t.URL}
		if h := s.cfg.Health; h != nil && h.StartUnhealthy {
			st.down.Store(downUnhealthy)
			st.unchecked.Store(true)
		}
		s.states[t.URL] = st
	}
	t.st = st
	if s.cfg.Policy == Cookie {
		t.cookie = cookieValue(s.cookieKey, t.URL)
		t.setCookie = s.cfg.Sticky.Cookie + "=" + t.cookie + "; Path=/; HttpOnly; SameSite=Lax"
		t.setCookieSecure = t.setCookie + "; Secure"
	}
	return t
}

// pruneStates forgets the states of URLs no target uses and nothing holds
// (discovery churn would otherwise keep every address ever seen). s.mu
// is held.
func (s *Set) pruneStates() {
	inUse := map[*state]bool{}
	for _, t := range s.tab.Load().all {
		inUse[t.st] = true
	}
	for url, st := range s.states {
		if !inUse[st] && st.active.Load() == 0 {
			delete(s.states, url)
		}
	}
}

// setTargets publishes all as the set's targets. s.mu is held.
func (s *Set) setTargets(all []*Target) {
	s.tab.Store(buildTable(all))
}

// rebuild publishes a new table after a target went in or out of
// rotation. s.mu is held.
func (s *Set) rebuild() {
	s.setTargets(s.tab.Load().all)
}

// current returns the table to choose from: the published one, rebuilt
// first when some target's down bits changed since it was built (through
// this set or the set of another config sharing the state).
func (s *Set) current() *table {
	tab := s.tab.Load()
	if tab.gen == downGen.Load() {
		return tab
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentLocked()
}

// currentLocked is current with s.mu held.
func (s *Set) currentLocked() *table {
	if tab := s.tab.Load(); tab.gen == downGen.Load() {
		return tab
	}
	s.rebuild()
	return s.tab.Load()
}

func buildTable(all []*Target) *table {
	tab := &table{all: all, equal: true, gen: downGen.Load()}
	for _, t := range all {
		if t.st.down.Load() == 0 {
			tab.up = append(tab.up, t)
		}
	}
	weights := make([]int, len(tab.up))
	for i, t := range tab.up {
		weights[i] = t.Weight
		if t.Weight != tab.up[0].Weight {
			tab.equal = false
		}
	}
	tab.seq = smoothSchedule(weights)
	for _, t := range all {
		if t.cookie != "" {
			if tab.byCookie == nil {
				tab.byCookie = make(map[string]*Target, len(all))
			}
			tab.byCookie[t.cookie] = t
		}
	}
	return tab
}

// Start starts the set's goroutines: a health checker per target (with
// Config.Health), the ejector (with Config.Passive) and the resolver
// (with Config.ResolveEvery). With discovery it first resolves every name
// once, for at most 5 seconds, so that requests find targets at once.
// Start does nothing after Close or a previous Start.
func (s *Set) Start() {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		return
	}
	s.started = true
	s.mu.Unlock()
	if len(s.names) > 0 {
		ctx, cancel := context.WithTimeout(s.ctx, resolveTimeout)
		s.resolve(ctx)
		cancel()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.names) > 0 {
		s.spawn("resolver", s.resolveLoop)
	}
	if s.cfg.Passive != nil {
		s.spawn("ejector", s.ejectLoop)
	}
	for _, t := range s.tab.Load().all {
		s.startChecker(t)
	}
}

// Close stops the set's goroutines and waits for them to end. The set
// still answers requests afterwards (with its last targets); a reload
// closes the old set once the new one serves.
func (s *Set) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// spawn runs f in a goroutine the set owns, until s.ctx is done, unless
// the set is closed. A panic is logged and ends that goroutine, not the
// process. s.mu is held: Close marks the set closed under it before it
// waits, so no goroutine starts after the wait began.
func (s *Set) spawn(what string, f func()) {
	if s.closed {
		return
	}
	s.wg.Go(func() {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("panic in upstream "+what, "panic", v)
			}
		}()
		f()
	})
}

// Name returns the upstream's name.
func (s *Set) Name() string { return s.cfg.Name }

// Config returns the configuration the set was built from.
func (s *Set) Config() *Config { return s.cfg }

// Key returns where a request's balancing key comes from: the hash key,
// the sticky cookie, or KeyNone. Pass the value to [Set.Begin].
func (s *Set) Key() Key {
	switch s.cfg.Policy {
	case Hash:
		return s.cfg.Key
	case Cookie:
		return Key{Kind: KeyCookie, Name: s.cfg.Sticky.Cookie}
	}
	return Key{}
}

// Targets returns the current targets, in rotation or not.
func (s *Set) Targets() []*Target { return s.tab.Load().all }

// RetryAfter returns the seconds a client should wait before trying
// again when no target could take its request: until the first ejection
// ends or an unhealthy target could pass its checks again, at least 1
// and at most 30.
func (s *Set) RetryAfter() int {
	now := time.Now().UnixNano()
	best, found := int64(0), false
	consider := func(ns int64) {
		ns = max(ns, 0) // an ejection that has just ended
		if !found || ns < best {
			best, found = ns, true
		}
	}
	for _, t := range s.tab.Load().all {
		down := t.st.down.Load()
		if down&downEjected != 0 {
			consider(t.st.ejectedUntil.Load() - now)
		}
		if down&downUnhealthy != 0 && s.cfg.Health != nil {
			consider(int64(s.cfg.Health.Interval) * int64(s.cfg.Health.HealthyAfter))
		}
	}
	secs := int((best + int64(time.Second) - 1) / int64(time.Second))
	return min(max(secs, 1), 30)
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}
