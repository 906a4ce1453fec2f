package upstream

import "testing"

// TestHealthStartUnhealthy: with Health.StartUnhealthy a new target is out
// of rotation until its first check passes, and one pass is enough; a
// target whose first check fails needs HealthyAfter passes, as any
// unhealthy one. A reload keeps the state of the targets it keeps and
// starts the new ones out.
func TestHealthStartUnhealthy(t *testing.T) {
	ready, booting := newStatusServer(t, 200), newStatusServer(t, 503)
	h := httpHealth()
	h.HealthyAfter = 3
	h.StartUnhealthy = true
	log, lb := newLogger()
	cfg := &Config{
		Name:           "app",
		Targets:        []TargetConfig{localTarget(t, ready.addr()), localTarget(t, booting.addr())},
		ConnectTimeout: hangGuard,
		Health:         h,
	}
	s := newTestSet(t, cfg, Options{Logger: log})
	r, b := s.Targets()[0], s.Targets()[1]
	if r.Healthy() || b.Healthy() {
		t.Fatalf("before any check: healthy %v, %v; want both out", r.Healthy(), b.Healthy())
	}
	if st := r.Status().State; st != "unhealthy" {
		t.Errorf("state before any check %q, want unhealthy", st)
	}
	s.Start()
	waitFor(t, "the ready target in rotation", r.Healthy)
	want := []string{"target healthy", "target=" + r.URL, `reason="first health check passed"`, "passes=1"}
	waitFor(t, "the \"first health check passed\" line", func() bool { return lb.has(want...) })
	for range 10 {
		if got := pickRelease(s, nil); got != r {
			t.Fatalf("Next() = %s, want the only target in rotation %s", u(got), r.URL)
		}
	}

	waitFor(t, "two failed checks of the booting target", func() bool { return booting.served(503) >= 2 })
	if b.Healthy() {
		t.Fatal("a target whose checks fail came into rotation")
	}
	// Its first check failed: now it needs HealthyAfter (3) passes.
	booting.set(200)
	waitFor(t, "the booting target in rotation", b.Healthy)
	if n := booting.served(200); n < 3 {
		t.Errorf("in rotation after %d passes, want HealthyAfter (3) after a failed first check", n)
	}

	// A reload: the kept targets keep their state, a new one starts out.
	extra := newStatusServer(t, 200)
	next := *cfg
	next.Targets = append(append([]TargetConfig(nil), cfg.Targets...), localTarget(t, extra.addr()))
	s2 := newTestSet(t, &next, Options{Logger: log, Previous: s})
	ts := s2.Targets()
	if !ts[0].Healthy() || !ts[1].Healthy() {
		t.Errorf("after a reload, the kept targets: healthy %v, %v; want both in rotation", ts[0].Healthy(), ts[1].Healthy())
	}
	if ts[2].Healthy() {
		t.Error("after a reload, the new target is in rotation before its first check")
	}
	s2.Start()
	waitFor(t, "the new target in rotation", ts[2].Healthy)
}

// TestHealthStartHealthyByDefault: without StartUnhealthy a target is in
// rotation before any check.
func TestHealthStartHealthyByDefault(t *testing.T) {
	srv := newStatusServer(t, 200)
	s := newTestSet(t, &Config{
		Targets:        []TargetConfig{localTarget(t, srv.addr())},
		ConnectTimeout: hangGuard,
		Health:         httpHealth(),
	}, Options{})
	if !s.Targets()[0].Healthy() {
		t.Error("a target is out of rotation before its first check without start_unhealthy")
	}
}
