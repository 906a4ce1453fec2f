package upstream

import (
	"log/slog"
	"sync/atomic"
)

// Options configures a [Set].
type Options struct {
	// Logger receives the set's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Set is the live form of one upstream: its targets and their state.
// It is safe for concurrent use.
type Set struct {
	cfg *Config
	log *slog.Logger
	tab atomic.Pointer[table]
	rr  atomic.Uint32 // round-robin position
}

// table is the immutable list of targets a request chooses from.
type table struct {
	all []*Target
}

// New returns the set for cfg. It starts no goroutine: see [Set.Start].
func New(cfg *Config, o Options) *Set {
	s := &Set{cfg: cfg, log: o.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	tab := &table{}
	for _, tc := range cfg.Targets {
		tab.all = append(tab.all, &Target{URL: tc.URL(), Scheme: tc.Scheme, Addr: tc.Addr(), set: s})
	}
	s.tab.Store(tab)
	return s
}

// Start starts the set's background work. It returns at once.
func (s *Set) Start() {}

// Close stops the set's background work and waits for it to end.
func (s *Set) Close() {}

// Name returns the upstream's name.
func (s *Set) Name() string { return s.cfg.Name }

// Config returns the configuration the set was built from.
func (s *Set) Config() *Config { return s.cfg }

// Targets returns the current targets.
func (s *Set) Targets() []*Target { return s.tab.Load().all }
