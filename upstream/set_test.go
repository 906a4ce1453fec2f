package upstream

import (
	"crypto/tls"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPrevious(t *testing.T) {
	tcs := fakeTargets(4) // A B C D
	// Both configs check health: a config without checks would bring the
	// unhealthy target back (TestPreviousCheckRemoved).
	h := &Health{Path: "/", Interval: time.Hour, Timeout: time.Second, HealthyAfter: 1, UnhealthyAfter: 1, Expect: []StatusRange{{200, 399}}}
	prev := newTestSet(t, &Config{Name: "api", Targets: tcs[:3], Health: h}, Options{})
	a, b, c := prev.Targets()[0], prev.Targets()[1], prev.Targets()[2]
	openSessionOn(t, prev, a)
	req := pick(prev, nil) // a request in flight, on whichever target
	setDown(prev, c, downUnhealthy, true)

	// The next config drops B and adds D.
	next := newTestSet(t, &Config{Name: "api", Targets: []TargetConfig{tcs[0], tcs[2], tcs[3]}, Health: h}, Options{Previous: prev})
	a2, c2, d2 := targetByURL(next, a.URL), targetByURL(next, c.URL), targetByURL(next, tcs[3].URL())
	wantA := int64(1)
	if req == a {
		wantA = 2
	}
	if a2.Sessions() != 1 || a2.Active() != wantA {
		t.Errorf("kept target: Sessions() = %d, Active() = %d, want 1 and %d", a2.Sessions(), a2.Active(), wantA)
	}
	if c2.Healthy() {
		t.Error("kept target: Healthy() = true, want false (its down bit is kept)")
	}
	if d2.Active() != 0 || !d2.Healthy() {
		t.Errorf("new target: Active() = %d, Healthy() = %v, want 0 and true", d2.Active(), d2.Healthy())
	}
	for range 30 {
		if got := pickRelease(next, nil); got == c2 {
			t.Fatalf("Next() = %q, which the previous set had taken out", u(got))
		}
	}
	// The state is shared: the session ends on the old Target, the new
	// one sees it.
	a.SessionClosed()
	if a2.Sessions() != 0 {
		t.Errorf("Sessions() = %d after the session on the previous set's target closed, want 0", a2.Sessions())
	}
	next.mu.Lock()
	_, keptB := next.states[b.URL]
	next.mu.Unlock()
	if keptB != (req == b) {
		t.Errorf("state of the dropped target B kept = %v, want %v (kept only while something holds it)", keptB, req == b)
	}
	req.Release()
}

// TestPreviousEjection: an ejection carries over, with its end.
func TestPreviousEjection(t *testing.T) {
	p := &Passive{Failures: 1, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100}
	prev := newTestSet(t, &Config{Targets: fakeTargets(2), Passive: p}, Options{})
	bad := prev.Targets()[0]
	failOn(t, prev, bad, ConnectFailed, 1)
	next := newTestSet(t, &Config{Targets: fakeTargets(2), Passive: p}, Options{Previous: prev})
	next.Start()
	bad2 := targetByURL(next, bad.URL)
	if bad2.Healthy() {
		t.Fatal("Healthy() = true, want the ejection kept")
	}
	if got := next.RetryAfter(); got != 30 {
		t.Errorf("RetryAfter() = %d during an hour's ejection, want 30", got)
	}
	if got := bad2.st.ejectedUntil.Load(); got != bad.st.ejectedUntil.Load() {
		t.Errorf("ejectedUntil = %d, want the previous set's %d", got, bad.st.ejectedUntil.Load())
	}
}

// TestPreviousReadmitStaleTable: a target that comes back through the
// previous set (its ejector or checker, which run until the reload closes
// it) must come back in the new set too.
func TestPreviousReadmitStaleTable(t *testing.T) {
	p := &Passive{Failures: 1, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100}
	prev := newTestSet(t, &Config{Targets: fakeTargets(2), Passive: p}, Options{})
	prev.Start()
	bad := prev.Targets()[0]
	failOn(t, prev, bad, ConnectFailed, 1)
	next := newTestSet(t, &Config{Targets: fakeTargets(2), Passive: p}, Options{Previous: prev})
	// The previous set's ejector readmits it (here at once, by hand, as
	// its timer would) before the reload closes the previous set.
	prev.mu.Lock()
	prev.readmit(bad, time.Now().UnixNano(), "ejection ended")
	prev.mu.Unlock()
	next.Start()
	prev.Close()
	bad2 := targetByURL(next, bad.URL)
	if !bad2.Healthy() {
		t.Fatal("Healthy() = false after the readmission, want true")
	}
	waitFor(t, "the readmitted target to be picked by the new set", func() bool {
		return pickRelease(next, nil) == bad2
	})
}

// TestPreviousCheckRemoved: a reload that removes health checks or
// passive ejection must not leave a target out for good.
func TestPreviousCheckRemoved(t *testing.T) {
	cases := []struct {
		name string
		bit  uint32
	}{
		{"health removed", downUnhealthy},
		{"passive removed", downEjected},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prev := newTestSet(t, &Config{
				Targets: fakeTargets(2),
				Health:  httpHealth(),
				Passive: &Passive{Failures: 1, Window: time.Minute, EjectFor: time.Millisecond, MaxEjectFor: time.Millisecond, MaxEjectPercent: 100},
			}, Options{})
			bad := prev.Targets()[0]
			setDown(prev, bad, tc.bit, true)
			bad.st.ejectedUntil.Store(time.Now().UnixNano()) // an ejection that has ended
			next := newTestSet(t, &Config{Targets: fakeTargets(2)}, Options{Previous: prev})
			next.Start()
			prev.Close()
			bad2 := targetByURL(next, bad.URL)
			waitFor(t, "the target back in rotation", func() bool {
				return bad2.Healthy() && pickRelease(next, nil) == bad2
			})
		})
	}
}

// TestPreviousSharedStateRace: while a reload runs, the previous and the
// new set share a target's state; each guards state.ejections and
// state.lastEjectEnd with its own mutex, which is no guard at all. Run
// with -race.
func TestPreviousSharedStateRace(t *testing.T) {
	p := &Passive{Failures: 1, Window: time.Minute, EjectFor: 20 * time.Millisecond, MaxEjectFor: time.Minute, MaxEjectPercent: 100}
	logPrev, _ := newLogger() // separate loggers: a shared one would order the two sets
	logNext, _ := newLogger()
	prev := newTestSet(t, &Config{Targets: fakeTargets(2), Passive: p}, Options{Logger: logPrev})
	prev.Start()
	bad := prev.Targets()[0]
	next := newTestSet(t, &Config{Targets: fakeTargets(2), Passive: p}, Options{Previous: prev, Logger: logNext})
	for range 3 {
		failOn(t, prev, bad, ConnectFailed, 1)
		waitFor(t, "the previous set's ejector to readmit the target", bad.Healthy)
		next.countFailure(targetByURL(next, bad.URL), "connection refused")
		next.mu.Lock()
		next.readmit(targetByURL(next, bad.URL), time.Now().UnixNano(), "test")
		next.mu.Unlock()
	}
}

// TestRetryAfter checks the bounds and what the value follows; where the
// clock is involved only loose bounds are asserted.
func TestRetryAfter(t *testing.T) {
	health := &Health{Interval: 2 * time.Second, HealthyAfter: 3, Timeout: time.Second, UnhealthyAfter: 1}
	cases := []struct {
		name     string
		health   *Health
		down     []uint32        // per target
		until    []time.Duration // ejectedUntil from now, per target
		min, max int
	}{
		{"nothing down", health, []uint32{0, 0}, nil, 1, 1},
		{"unhealthy", health, []uint32{downUnhealthy, 0}, nil, 6, 6},
		{"unhealthy without checks", nil, []uint32{downUnhealthy, 0}, nil, 1, 1},
		{"long ejection", health, []uint32{downEjected, 0}, []time.Duration{10 * time.Minute, 0}, 30, 30},
		{"ejection", health, []uint32{downEjected, 0}, []time.Duration{25 * time.Second, 0}, 5, 25},
		{"ejection ended", health, []uint32{downEjected, 0}, []time.Duration{-time.Second, 0}, 1, 1},
		{"first to end", health, []uint32{downEjected, downUnhealthy}, []time.Duration{10 * time.Minute, 0}, 6, 6},
		{"first to end reversed", health, []uint32{downUnhealthy, downEjected}, []time.Duration{0, 10 * time.Minute}, 6, 6},
		{"both", health, []uint32{downEjected | downUnhealthy, 0}, []time.Duration{25 * time.Second, 0}, 5, 6},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSet(t, &Config{Targets: fakeTargets(len(tc.down)), Health: tc.health}, Options{})
			for i, tgt := range s.Targets() {
				if i < len(tc.until) && tc.until[i] != 0 {
					tgt.st.ejectedUntil.Store(time.Now().Add(tc.until[i]).UnixNano())
				}
				if tc.down[i] != 0 {
					setDown(s, tgt, tc.down[i], true)
				}
			}
			if got := s.RetryAfter(); got < tc.min || got > tc.max {
				t.Errorf("RetryAfter() = %d, want %d..%d", got, tc.min, tc.max)
			}
		})
	}
}

// TestRetryAfterEjection: a real ejection of 25s gives a value between 1
// and 25 that is clearly above the floor.
func TestRetryAfterEjection(t *testing.T) {
	s := newTestSet(t, passiveConfig(2, Passive{Failures: 1, Window: time.Minute, EjectFor: 25 * time.Second, MaxEjectFor: time.Minute, MaxEjectPercent: 100}), Options{})
	failOn(t, s, s.Targets()[0], ConnectFailed, 1)
	if got := s.RetryAfter(); got < 5 || got > 25 {
		t.Errorf("RetryAfter() = %d during a 25s ejection, want 5..25", got)
	}
}

// TestRetryAfterEndedFirst: an ejection that has just ended (the ejector
// has not readmitted the target yet) means "retry at once", whatever the
// order of the targets.
func TestRetryAfterEndedFirst(t *testing.T) {
	s := newTestSet(t, &Config{Targets: fakeTargets(2)}, Options{})
	ended, long := s.Targets()[0], s.Targets()[1]
	ended.st.ejectedUntil.Store(time.Now().Add(-time.Second).UnixNano())
	long.st.ejectedUntil.Store(time.Now().Add(10 * time.Minute).UnixNano())
	setDown(s, ended, downEjected, true)
	setDown(s, long, downEjected, true)
	if got := s.RetryAfter(); got != 1 {
		t.Errorf("RetryAfter() = %d with an ejection that has ended, want 1", got)
	}
}

// TestGoroutines: sets with every goroutine kind (checkers, ejector,
// resolver) leave none behind after Close.
func TestGoroutines(t *testing.T) {
	srv, static := newStatusServer(t, 200), newStatusServer(t, 200)
	tc := localTarget(t, srv.addr())
	r := newFakeResolver()
	r.set("svc.test", tc.Host)
	baseline := runtime.NumGoroutine()

	const n = 20
	sets := make([]*Set, n)
	for i := range sets {
		cfg := &Config{
			Name: "api",
			Targets: []TargetConfig{
				{Scheme: "http", Host: "svc.test", Port: tc.Port, Weight: 1}, // discovered
				localTarget(t, static.addr()),                                // static
			},
			ConnectTimeout: hangGuard,
			ResolveEvery:   20 * time.Millisecond,
			Health:         httpHealth(),
			Passive:        &Passive{Failures: 1, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 50},
		}
		sets[i] = New(cfg, Options{Resolver: r, Logger: discardLogger()})
		t.Cleanup(sets[i].Close) // on an early failure; Close is idempotent
		sets[i].Start()
		if n := len(sets[i].Targets()); n != 2 {
			t.Fatalf("%d targets after Start, want 2 (one discovered, one static)", n)
		}
	}
	// Every set checks its target and resolves at least once more.
	waitFor(t, "checks from every set", func() bool { return srv.served(200) >= 2*n && static.served(200) >= 2*n })
	r.waitRounds(t, "svc.test", n)
	if got := runtime.NumGoroutine(); got <= baseline {
		t.Fatalf("%d goroutines while %d sets run, baseline %d: want more (the test would prove nothing)", got, n, baseline)
	}
	for _, s := range sets {
		s.Close()
		s.Close() // twice: no panic, no wait
		s.Start() // after Close: nothing
	}
	waitFor(t, "the goroutine count back to its baseline", func() bool {
		return runtime.NumGoroutine() <= baseline
	})
	// Nothing runs any more: a closed set (started again, in vain) looks
	// nothing up while another set resolves three times. (Lookups are
	// counted in the set's own goroutine; the servers' request counts are
	// not used here, as a request cut by Close may still reach the server
	// after Close returned.)
	before := r.lookups("svc.test")
	other := newTestSet(t, &Config{Targets: []TargetConfig{{Scheme: "http", Host: "other.test", Port: "80", Weight: 1}}, ResolveEvery: 20 * time.Millisecond}, Options{Resolver: r})
	other.Start()
	r.waitRounds(t, "other.test", 3)
	if got := r.lookups("svc.test"); got != before {
		t.Errorf("%d lookups of closed sets' names, want none", got-before)
	}
	for _, s := range sets {
		s.mu.Lock()
		n := len(s.checkers)
		s.mu.Unlock()
		if n != 2 {
			t.Errorf("%d checkers recorded, want the 2 of the first Start only", n)
		}
	}
}

func discardLogger() *slog.Logger {
	l, _ := newLogger()
	return l
}

// TestStartTwice: a second Start starts nothing more.
func TestStartTwice(t *testing.T) {
	srv := newStatusServer(t, 200)
	s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, srv.addr())}, ConnectTimeout: hangGuard, Health: httpHealth()}, Options{})
	s.Start()
	s.Start()
	s.mu.Lock()
	n := len(s.checkers)
	s.mu.Unlock()
	if n != 1 {
		t.Errorf("%d checkers after two Starts, want 1", n)
	}
}

// TestCloseKeepsServing: a closed set still answers requests with its
// last targets (a reload closes the old set while requests may use it).
func TestCloseKeepsServing(t *testing.T) {
	s := New(&Config{Targets: fakeTargets(2)}, Options{Logger: discardLogger()})
	s.Start()
	s.Close()
	if got := pickRelease(s, nil); got == nil {
		t.Error("Next() = nil on a closed set, want a target")
	}
}

// TestConcurrentAttempts: many goroutines balancing, failing and being
// ejected at once keep exact counts (run with -race).
func TestConcurrentAttempts(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(p.String(), func(t *testing.T) {
			cfg := policyConfig(p, fakeTargets(5))
			cfg.Retries, cfg.MaxConnections = 2, 50
			cfg.Passive = &Passive{Failures: 5, Window: time.Minute, EjectFor: 5 * time.Millisecond, MaxEjectFor: 20 * time.Millisecond, MaxEjectPercent: 40}
			s := newTestSet(t, cfg, Options{Rand: seededRand(12)})
			s.Start()
			key := policyKey(s)
			var wg sync.WaitGroup
			var served atomic.Int64
			for g := range 8 {
				wg.Go(func() {
					for i := range 300 {
						var a Attempt
						s.Begin(&a, time.Now(), key)
						for tgt := a.Next(); tgt != nil; tgt = a.Next() {
							if (g+i)%7 == 0 {
								a.Failed(tgt, ConnectFailed, true, nil)
								continue
							}
							a.Responded(tgt, 200)
							if i%3 == 0 {
								tgt.SessionOpened()
								tgt.SessionClosed()
							} else {
								tgt.Release()
							}
							served.Add(1)
							break
						}
					}
				})
			}
			wg.Wait()
			if served.Load() == 0 {
				t.Fatal("no request served")
			}
			for _, tgt := range s.Targets() {
				if tgt.Active() != 0 || tgt.Sessions() != 0 {
					t.Errorf("%s Active() = %d, Sessions() = %d after every request ended, want 0 and 0", tgt.URL, tgt.Active(), tgt.Sessions())
				}
			}
		})
	}
}

func TestAttached(t *testing.T) {
	s := newTestSet(t, &Config{Targets: fakeTargets(1)}, Options{})
	tgt := s.Targets()[0]
	var calls atomic.Int32
	mk := func(t *Target) any {
		calls.Add(1)
		return t.URL + "#client"
	}
	var wg sync.WaitGroup
	results := make([]any, 16)
	for i := range results {
		wg.Go(func() { results[i] = tgt.Attached(mk) })
	}
	wg.Wait()
	for i, v := range results {
		if v != results[0] {
			t.Errorf("Attached() #%d = %v, want %v (one result for all)", i, v, results[0])
		}
	}
	if got := tgt.Attached(mk); got != "http://10.0.0.1:8080#client" {
		t.Errorf("Attached() = %v, want %q", got, "http://10.0.0.1:8080#client")
	}
	before := calls.Load()
	tgt.Attached(mk)
	if calls.Load() != before {
		t.Error("Attached() called mk again after a value was kept")
	}
	if tgt.Set() != s {
		t.Error("Set() is not the target's set")
	}
}

func TestTargetTLSConfig(t *testing.T) {
	base := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
	cases := []struct {
		name       string
		base       *tls.Config
		host       string
		wantServer string
		wantMin    uint16
	}{
		{"default", nil, "api.internal", "api.internal", tls.VersionTLS12},
		{"base", base, "api.internal", "api.internal", tls.VersionTLS13},
		{"configured name", &tls.Config{ServerName: "name.example"}, "api.internal", "name.example", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSet(t, &Config{TLS: tc.base, Targets: []TargetConfig{{Scheme: "https", Host: tc.host, Port: "443", Weight: 1}}}, Options{})
			tgt := s.Targets()[0]
			if !tgt.TLS() {
				t.Error("TLS() = false for https, want true")
			}
			c := tgt.TLSConfig()
			if c.ServerName != tc.wantServer || c.MinVersion != tc.wantMin || !slices.Equal(c.NextProtos, []string{"http/1.1"}) {
				t.Errorf("TLSConfig() = ServerName %q MinVersion %#x NextProtos %q, want %q %#x [http/1.1]", c.ServerName, c.MinVersion, c.NextProtos, tc.wantServer, tc.wantMin)
			}
			if c == tc.base || c == tgt.TLSConfig() {
				t.Error("TLSConfig() returned a shared config, want a new one per call")
			}
		})
	}
	if !slices.Equal(base.NextProtos, []string{"h2"}) || base.ServerName != "" {
		t.Errorf("base config changed to NextProtos %q ServerName %q, want it untouched", base.NextProtos, base.ServerName)
	}
}

func TestHostHeader(t *testing.T) {
	cases := []struct {
		scheme, host, addr, want string
	}{
		{"http", "api.internal", "10.0.0.1:80", "api.internal"},
		{"http", "api.internal", "10.0.0.1:8080", "api.internal:8080"},
		{"https", "api.internal", "10.0.0.1:443", "api.internal"},
		{"https", "api.internal", "10.0.0.1:80", "api.internal:80"},
		{"http", "::1", "[::1]:80", "[::1]"},
		{"http", "::1", "[::1]:81", "[::1]:81"},
	}
	for _, tc := range cases {
		t.Run(tc.scheme+" "+tc.addr, func(t *testing.T) {
			if got := hostHeader(&Target{Scheme: tc.scheme, Host: tc.host, Addr: tc.addr}); got != tc.want {
				t.Errorf("hostHeader(%s %q %q) = %q, want %q", tc.scheme, tc.host, tc.addr, got, tc.want)
			}
		})
	}
}

// TestPreviousDiscoveredState: the state of a discovered target (here an
// ejection) carries over to the set of the next config, whose first
// lookup finds the address again.
func TestPreviousDiscoveredState(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.test", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
	p := &Passive{Failures: 1, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100}
	cfg := func() *Config {
		return &Config{Name: "api", Targets: []TargetConfig{{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1}}, ResolveEvery: time.Hour, Passive: p}
	}
	prev := newTestSet(t, cfg(), Options{Resolver: r})
	prev.Start()
	bad := prev.Targets()[0]
	failOn(t, prev, bad, ConnectFailed, 1)
	if bad.Healthy() {
		t.Fatal("Healthy() = true after the failure, want ejected")
	}
	next := newTestSet(t, cfg(), Options{Resolver: r, Previous: prev})
	next.Start()
	bad2 := targetByURL(next, bad.URL)
	if bad2 == nil {
		t.Fatalf("%s not discovered by the next set", bad.URL)
	}
	if bad2.Healthy() {
		t.Errorf("%s: Healthy() = true in the next set, want the ejection kept", bad.URL)
	}
}

// TestCrossSetEjectionEnds: an ejection made through the set of the old
// config (a request of it failing after the reload) ends in the new set
// too, although only the old set's ejector heard of it.
func TestCrossSetEjectionEnds(t *testing.T) {
	p := &Passive{Failures: 1, Window: time.Minute, EjectFor: 100 * time.Millisecond, MaxEjectFor: time.Second, MaxEjectPercent: 100}
	prev := newTestSet(t, &Config{Name: "a", Targets: fakeTargets(2), Passive: p}, Options{})
	prev.Start()
	next := newTestSet(t, &Config{Name: "a", Targets: fakeTargets(2), Passive: p}, Options{Previous: prev})
	next.Start()
	prev.Close()
	bad := prev.Targets()[0]
	failOn(t, prev, bad, ConnectFailed, 1)
	bad2 := targetByURL(next, bad.URL)
	if bad2.Healthy() {
		t.Fatal("Healthy() = true in the new set right after the ejection, want false")
	}
	waitFor(t, "the ejection to end in the new set", bad2.Healthy)
}

// TestPassiveThresholdAfterCap: failures counted past the threshold while
// the cap held the ejection back still eject once the cap allows it.
func TestPassiveThresholdAfterCap(t *testing.T) {
	p := &Passive{Failures: 1, Window: time.Hour, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 50}
	s := newTestSet(t, &Config{Name: "a", Targets: fakeTargets(2), Passive: p}, Options{})
	a, b := s.Targets()[0], s.Targets()[1]
	failOn(t, s, a, ConnectFailed, 1) // a out: 1 of 2
	failOn(t, s, b, ConnectFailed, 1) // the cap holds b back
	if a.Healthy() || !b.Healthy() {
		t.Fatalf("Healthy() a %v b %v, want a ejected and b held back by the cap", a.Healthy(), b.Healthy())
	}
	s.mu.Lock()
	s.readmit(a, time.Now().UnixNano(), "test")
	s.mu.Unlock()
	failOn(t, s, b, ConnectFailed, 1) // b's window holds 2 now: past the threshold
	if b.Healthy() {
		t.Error("Healthy() = true for b after a failure past the threshold, with the cap free again: want ejected")
	}
}
