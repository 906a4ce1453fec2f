package upstream

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// tryOn starts an attempt whose first try is on want (other targets the
// policy hands out on the way are released) and returns it, want held.
func tryOn(t *testing.T, s *Set, want *Target) *Attempt {
	t.Helper()
	for range 1000 {
		a := &Attempt{}
		s.Begin(a, time.Now(), nil)
		got := a.Next()
		if got == want {
			return a
		}
		if got != nil {
			got.Release()
		}
	}
	t.Fatalf("Next() never returned %s", want.URL)
	return nil
}

// failOn fails one try on want n times.
func failOn(t *testing.T, s *Set, want *Target, r Result, n int) {
	t.Helper()
	for range n {
		tryOn(t, s, want).Failed(want, r, false, errors.New("connection refused"))
	}
}

func passiveConfig(n int, p Passive) *Config {
	return &Config{Name: "api", Targets: fakeTargets(n), Passive: &p}
}

func TestPassiveEject(t *testing.T) {
	log, lb := newLogger()
	s := newTestSet(t, passiveConfig(3, Passive{
		Failures: 3, Window: time.Minute, EjectFor: 50 * time.Millisecond, MaxEjectFor: time.Minute, MaxEjectPercent: 100,
	}), Options{Logger: log})
	s.Start()
	bad := s.Targets()[1]

	failOn(t, s, bad, ConnectFailed, 2)
	if !bad.Healthy() {
		t.Fatal("Healthy() = false after 2 of 3 failures, want true")
	}
	failOn(t, s, bad, ConnectFailed, 1)
	// The ejector may already have readmitted it (50ms): the log says it
	// happened, and while it lasts no pick returns it.
	lines := lb.lines("target unhealthy", "target="+bad.URL)
	if len(lines) != 1 {
		t.Fatalf("%d \"target unhealthy\" lines after 3 failures, want 1:\n%s", len(lines), lb)
	}
	for _, want := range []string{`reason="ejected: 3 failures within 1m0s (last: connection refused)"`, "eject_ms=50", "ejections=1", "level=WARN"} {
		if !lb.has("target unhealthy", want) {
			t.Errorf("ejection line %q lacks %s", lines[0], want)
		}
	}
	for range 30 {
		got := pickRelease(s, nil)
		if got == bad && !bad.Healthy() {
			t.Fatalf("Next() = ejected target %s", bad.URL)
		}
	}
	waitFor(t, "the ejected target to come back", bad.Healthy)
	waitFor(t, "the \"target healthy\" line", func() bool {
		return lb.has("target healthy", "target="+bad.URL, `reason="ejection ended"`)
	})
	seen := false
	for range 30 {
		seen = seen || pickRelease(s, nil) == bad
	}
	if !seen {
		t.Errorf("readmitted target %s never picked in 30 round-robin picks", bad.URL)
	}
}

// TestPassiveDoubling: each ejection in a row lasts twice the previous
// one; the ejector readmits the target in between. It checks the
// arithmetic (ejectedUntil and the log's eject_ms), not how fast the
// ejector readmits. MaxEjectFor is long so that a slow machine never looks
// like a target that has been back for long.
func TestPassiveDoubling(t *testing.T) {
	log, lb := newLogger()
	maxEject := 2 * hangGuard
	s := newTestSet(t, passiveConfig(2, Passive{
		Failures: 2, Window: time.Minute, EjectFor: 40 * time.Millisecond, MaxEjectFor: maxEject, MaxEjectPercent: 100,
	}), Options{Logger: log})
	s.Start()
	bad := s.Targets()[0]
	for i, want := range []time.Duration{40, 80, 160} {
		want *= time.Millisecond
		waitFor(t, "the target in rotation", bad.Healthy)
		before := time.Now().UnixNano()
		failOn(t, s, bad, ConnectFailed, 2)
		after := time.Now().UnixNano()
		if !lb.has("target unhealthy", fmt.Sprintf("eject_ms=%d ", want.Milliseconds()), fmt.Sprintf("ejections=%d", i+1)) {
			t.Fatalf("ejection %d: no line with eject_ms=%d ejections=%d:\n%s", i+1, want.Milliseconds(), i+1, lb)
		}
		if until := bad.st.ejectedUntil.Load(); until != 0 { // 0: already readmitted
			if start := until - int64(want); start < before || start > after {
				t.Errorf("ejection %d: ejectedUntil-%s = %d, want within [%d, %d] (the ejection's start)", i+1, want, start, before, after)
			}
		}
	}
	waitFor(t, "the target in rotation", bad.Healthy)
	// readmit logs right after the target is back in rotation: wait for
	// the line, then check there are no more than three.
	waitFor(t, "three \"target healthy\" lines", func() bool {
		return lb.count("target healthy", "target="+bad.URL, `reason="ejection ended"`) >= 3
	})
	if n := lb.count("target healthy", "target="+bad.URL, `reason="ejection ended"`); n != 3 {
		t.Errorf("%d \"target healthy\" lines after 3 ejections ended, want 3", n)
	}
	// Back for longer than MaxEjectFor: the doubling starts over.
	s.mu.Lock()
	bad.st.lastEjectEnd.Add(-int64(maxEject + time.Second))
	s.mu.Unlock()
	failOn(t, s, bad, ConnectFailed, 2)
	if !lb.has("target unhealthy", "eject_ms=40 ", "ejections=1") {
		t.Errorf("ejection after a long time back: no line with eject_ms=40 ejections=1:\n%s", lb)
	}
}

// TestPassiveDoublingCap: the doubling stops at MaxEjectFor. The target
// is readmitted by hand, at once, so no ejector and no clock is involved.
func TestPassiveDoublingCap(t *testing.T) {
	s := newTestSet(t, passiveConfig(2, Passive{
		Failures: 1, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: 3 * time.Hour, MaxEjectPercent: 100,
	}), Options{})
	bad := s.Targets()[0]
	for i, want := range []time.Duration{1, 2, 3, 3, 3} {
		want *= time.Hour
		before := time.Now().UnixNano()
		failOn(t, s, bad, ConnectFailed, 1)
		after := time.Now().UnixNano()
		if bad.Healthy() {
			t.Fatalf("ejection %d: Healthy() = true, want ejected", i+1)
		}
		if start := bad.st.ejectedUntil.Load() - int64(want); start < before || start > after {
			t.Errorf("ejection %d: ejectedUntil-%s = %d, want within [%d, %d]", i+1, want, start, before, after)
		}
		if got := s.RetryAfter(); got != 30 {
			t.Errorf("RetryAfter() = %d during an ejection of %s, want 30 (the cap)", got, want)
		}
		s.mu.Lock()
		s.readmit(bad, time.Now().UnixNano(), "test")
		s.mu.Unlock()
		if !bad.Healthy() {
			t.Fatalf("Healthy() = false after readmit, want true")
		}
	}
}

func TestPassiveMaxEjectPercent(t *testing.T) {
	log, lb := newLogger()
	s := newTestSet(t, passiveConfig(2, Passive{
		Failures: 2, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 50,
	}), Options{Logger: log})
	s.Start()
	first, second := s.Targets()[0], s.Targets()[1]
	failOn(t, s, first, ConnectFailed, 2)
	if first.Healthy() {
		t.Fatal("first target Healthy() = true after 2 failures, want ejected (1 of 2 is 50 %)")
	}
	for range 10 {
		failOn(t, s, second, ConnectFailed, 1)
		if !second.Healthy() {
			t.Fatal("second target ejected: 2 of 2 out is over max_eject_percent 50")
		}
	}
	if n := lb.count("target not ejected: max_eject_percent reached", "target="+second.URL, "out_of_rotation=1", "targets=2", "max_eject_percent=50"); n != 1 {
		t.Errorf("%d \"max_eject_percent reached\" lines, want 1 (one per window):\n%s", n, lb)
	}
	if n := lb.count("target unhealthy"); n != 1 {
		t.Errorf("%d \"target unhealthy\" lines, want 1", n)
	}
	if got := pickRelease(s, nil); got != second {
		t.Errorf("Next() = %q, want the one target in rotation %q", u(got), u(second))
	}
}

func TestPassiveNotCounted(t *testing.T) {
	cases := []struct {
		name     string
		count5xx bool
		fail     func(t *testing.T, s *Set, tgt *Target)
		ejected  bool
	}{
		{"busy", true, func(t *testing.T, s *Set, tgt *Target) { failOn(t, s, tgt, Busy, 10) }, false},
		{"aborted", true, func(t *testing.T, s *Set, tgt *Target) { failOn(t, s, tgt, Aborted, 10) }, false},
		{"timeouts", false, func(t *testing.T, s *Set, tgt *Target) { failOn(t, s, tgt, TimedOut, 2) }, true},
		{"broken", false, func(t *testing.T, s *Set, tgt *Target) { failOn(t, s, tgt, Broken, 2) }, true},
		{"503 without count_5xx", false, func(t *testing.T, s *Set, tgt *Target) { respondOn(t, s, tgt, 503, 10) }, false},
		{"503 with count_5xx", true, func(t *testing.T, s *Set, tgt *Target) { respondOn(t, s, tgt, 503, 2) }, true},
		{"599 with count_5xx", true, func(t *testing.T, s *Set, tgt *Target) { respondOn(t, s, tgt, 599, 2) }, true},
		{"4xx with count_5xx", true, func(t *testing.T, s *Set, tgt *Target) { respondOn(t, s, tgt, 429, 10) }, false},
		{"200 with count_5xx", true, func(t *testing.T, s *Set, tgt *Target) { respondOn(t, s, tgt, 200, 10) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log, lb := newLogger()
			s := newTestSet(t, passiveConfig(3, Passive{
				Failures: 2, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100, Count5xx: tc.count5xx,
			}), Options{Logger: log})
			tgt := s.Targets()[0]
			tc.fail(t, s, tgt)
			if got := !tgt.Healthy(); got != tc.ejected {
				t.Errorf("ejected = %v, want %v", got, tc.ejected)
			}
			if got := lb.has("target unhealthy", "ejected"); got != tc.ejected {
				t.Errorf("\"target unhealthy\" logged = %v, want %v:\n%s", got, tc.ejected, lb)
			}
			if tc.ejected && tc.count5xx && !lb.has("target unhealthy", "(last: status 5") {
				t.Errorf("ejection line does not name the status:\n%s", lb)
			}
			if got := tgt.Active(); got != 0 {
				t.Errorf("Active() = %d, want 0", got)
			}
		})
	}
}

// respondOn answers n requests on want with status.
func respondOn(t *testing.T, s *Set, want *Target, status, n int) {
	t.Helper()
	for range n {
		tryOn(t, s, want).Responded(want, status)
		want.Release()
	}
}

// TestPassiveWindow: failures further apart than Window do not add up.
func TestPassiveWindow(t *testing.T) {
	s := newTestSet(t, passiveConfig(2, Passive{
		Failures: 3, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100,
	}), Options{})
	tgt := s.Targets()[0]
	failOn(t, s, tgt, ConnectFailed, 2)
	// Two minutes pass: the window ends.
	tgt.st.winStart.Add(-int64(2 * time.Minute))
	failOn(t, s, tgt, ConnectFailed, 2)
	if !tgt.Healthy() {
		t.Fatal("ejected after 2+2 failures in two windows, want in rotation")
	}
	failOn(t, s, tgt, ConnectFailed, 1)
	if tgt.Healthy() {
		t.Fatal("in rotation after 3 failures in one window, want ejected")
	}
}

func TestPassiveOff(t *testing.T) {
	log, lb := newLogger()
	s := newTestSet(t, &Config{Targets: fakeTargets(2)}, Options{Logger: log})
	tgt := s.Targets()[0]
	failOn(t, s, tgt, ConnectFailed, 50)
	respondOn(t, s, tgt, 503, 50)
	if !tgt.Healthy() || lb.has("target unhealthy") {
		t.Errorf("Healthy() = %v without passive ejection configured, want true:\n%s", tgt.Healthy(), lb)
	}
}
