package upstream

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

var allPolicies = []Policy{RoundRobin, LeastConn, Random, Hash, Cookie}

// policyConfig returns a config of policy p over tcs, with the key and
// cookie the policy needs.
func policyConfig(p Policy, tcs []TargetConfig) *Config {
	return &Config{
		Policy:  p,
		Targets: tcs,
		Key:     Key{Kind: KeyHeader, Name: "X-User"},
		Sticky:  Sticky{Cookie: "wsg", Secret: "s3cret"},
	}
}

// policyKey returns a key to Begin with under p: a hash key, or the
// cookie of the set's first target.
func policyKey(s *Set) []byte {
	switch s.cfg.Policy {
	case Hash:
		return []byte("user-42")
	case Cookie:
		return []byte(s.Targets()[0].cookie)
	}
	return nil
}

func TestFailedAgain(t *testing.T) {
	cases := []struct {
		r          Result
		replayable bool
		want       bool
	}{
		{ConnectFailed, false, true},
		{ConnectFailed, true, true},
		{ConnectTimedOut, false, true},
		{Busy, false, true},
		{Broken, false, false},
		{Broken, true, true},
		{TimedOut, false, false},
		{TimedOut, true, false},
		{BadResponse, true, false},
		{Aborted, true, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d replayable=%v", tc.r, tc.replayable), func(t *testing.T) {
			s := newTestSet(t, &Config{Targets: fakeTargets(3), Retries: 2}, Options{})
			var a Attempt
			s.Begin(&a, time.Now(), nil)
			first := a.Next()
			if got := a.Failed(first, tc.r, tc.replayable, errors.New("boom")); got != tc.want {
				t.Errorf("Failed(%d, %v) = %v, want %v", tc.r, tc.replayable, got, tc.want)
			}
			if first.Active() != 0 {
				t.Errorf("Active() = %d after Failed, want 0 (Failed releases)", first.Active())
			}
			second := a.Next()
			if (second != nil) != tc.want {
				t.Fatalf("Next() after Failed = %q, want a target: %v", u(second), tc.want)
			}
			if second != nil {
				if second == first {
					t.Errorf("Next() = %q again, want another target", u(second))
				}
				second.Release()
			}
		})
	}
}

// TestRetriesBound: Retries=r allows r+1 targets, never the same one twice.
func TestRetriesBound(t *testing.T) {
	for _, p := range allPolicies {
		for _, retries := range []int{0, 1, 2, 5, 15} {
			t.Run(fmt.Sprintf("%s retries=%d", p, retries), func(t *testing.T) {
				cfg := policyConfig(p, fakeTargets(6))
				cfg.Retries = retries
				s := newTestSet(t, cfg, Options{})
				var a Attempt
				s.Begin(&a, time.Now(), policyKey(s))
				tried := map[*Target]bool{}
				for range 20 {
					tgt := a.Next()
					if tgt == nil {
						break
					}
					if tried[tgt] {
						t.Fatalf("Next() = %q a second time in one attempt", u(tgt))
					}
					tried[tgt] = true
					a.Failed(tgt, ConnectFailed, true, nil)
				}
				want := min(retries+1, 6)
				if len(tried) != want || a.Tries() != want {
					t.Errorf("tried %d targets, Tries() = %d, want %d", len(tried), a.Tries(), want)
				}
				for _, tgt := range s.Targets() {
					if tgt.Active() != 0 {
						t.Errorf("%s Active() = %d after every try failed, want 0", tgt.URL, tgt.Active())
					}
				}
			})
		}
	}
}

// TestRetriesMaxTries: Retries beyond what the tried list holds stop at
// maxTries targets.
func TestRetriesMaxTries(t *testing.T) {
	s := newTestSet(t, &Config{Targets: fakeTargets(maxTries + 4), Retries: 100}, Options{})
	var a Attempt
	s.Begin(&a, time.Now(), nil)
	for range maxTries + 10 {
		tgt := a.Next()
		if tgt == nil {
			break
		}
		a.Failed(tgt, ConnectFailed, true, nil)
	}
	if a.Tries() != maxTries {
		t.Errorf("Tries() = %d with Retries 100, want %d", a.Tries(), maxTries)
	}
}

func TestNextWithoutFailed(t *testing.T) {
	s := newTestSet(t, &Config{Targets: fakeTargets(3), Retries: 2}, Options{})
	var a Attempt
	s.Begin(&a, time.Now(), nil)
	first := a.Next()
	if got := a.Next(); got != nil {
		t.Errorf("Next() = %q without a Failed in between, want nil", u(got))
	}
	first.Release()
}

func TestTryTimeout(t *testing.T) {
	cases := []struct {
		name       string
		tryTimeout time.Duration
		startedAgo time.Duration
		wantSecond bool
	}{
		{"passed", time.Millisecond, time.Hour, false},
		{"not yet", time.Hour, 0, true},
		{"none", 0, time.Hour, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSet(t, &Config{Targets: fakeTargets(3), Retries: 2, TryTimeout: tc.tryTimeout}, Options{})
			var a Attempt
			s.Begin(&a, time.Now().Add(-tc.startedAgo), nil)
			first := a.Next()
			if first == nil {
				t.Fatal("first Next() = nil, want a target: the first try always starts")
			}
			if !a.Failed(first, ConnectFailed, true, nil) {
				t.Fatal("Failed(ConnectFailed) = false, want true")
			}
			second := a.Next()
			if (second != nil) != tc.wantSecond {
				t.Errorf("second Next() = %q, want a target: %v", u(second), tc.wantSecond)
			}
			if second != nil {
				second.Release()
			}
		})
	}
}

func TestMaxConnections(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(p.String(), func(t *testing.T) {
			cfg := policyConfig(p, fakeTargets(3))
			cfg.MaxConnections = 2
			s := newTestSet(t, cfg, Options{Rand: seededRand(3)})
			key := policyKey(s)
			var held []*Target
			for i := range 6 {
				tgt := pick(s, key)
				if tgt == nil {
					t.Fatalf("Next() = nil at %d of 6 slots, want a target", i)
				}
				tgt.SessionOpened()
				held = append(held, tgt)
			}
			for _, tgt := range s.Targets() {
				if tgt.Active() != 2 {
					t.Errorf("%s Active() = %d, want 2 (the cap)", tgt.URL, tgt.Active())
				}
			}
			if got := pick(s, key); got != nil {
				t.Fatalf("Next() = %q with every target at max_connections, want nil", u(got))
			}
			for _, tgt := range s.Targets() {
				if tgt.Active() != 2 {
					t.Errorf("%s Active() = %d after a refused pick, want 2 (no count leaks)", tgt.URL, tgt.Active())
				}
			}
			freed := held[3]
			freed.SessionClosed()
			got := pick(s, key)
			if got != freed {
				t.Fatalf("Next() = %q after a session closed on it, want %q", u(got), freed.URL)
			}
			// A request (Release) frees its slot the same way.
			got.Release()
			if again := pick(s, key); again != freed {
				t.Fatalf("Next() = %q after Release on it, want %q", u(again), freed.URL)
			}
		})
	}
}

// TestMaxConnectionsSkips: a target at the cap is passed over for one
// that has room, by every policy; hash and cookie go to another target
// rather than fail.
func TestMaxConnectionsSkips(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(p.String(), func(t *testing.T) {
			cfg := policyConfig(p, fakeTargets(3))
			cfg.MaxConnections = 1
			s := newTestSet(t, cfg, Options{Rand: seededRand(8)})
			key := policyKey(s)
			full := pick(s, key) // for hash and cookie: the key's own target
			for range 50 {
				got := pickRelease(s, key)
				if got == nil || got == full {
					t.Fatalf("Next() = %q while %s is at max_connections, want another target", u(got), full.URL)
				}
			}
			full.Release()
			if p == Hash || p == Cookie {
				if got := pickRelease(s, key); got != full {
					t.Errorf("Next() = %q after the key's target freed up, want %q", u(got), full.URL)
				}
			}
		})
	}
}

// TestMaxConnectionsManyFull: more targets at the cap than a least-loaded
// pick passes over (maxFull) still finds the free one.
func TestMaxConnectionsManyFull(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(p.String(), func(t *testing.T) {
			cfg := policyConfig(p, fakeTargets(2*maxFull+1))
			cfg.MaxConnections = 1
			s := newTestSet(t, cfg, Options{Rand: seededRand(2)})
			all := s.Targets()
			free := all[len(all)-1]
			for _, tgt := range all[:len(all)-1] {
				tgt.st.active.Add(1) // a request in flight on every other target
			}
			got := pickRelease(s, policyKey(s))
			if got != free {
				t.Errorf("Next() = %q, want the one target with room %q", u(got), free.URL)
			}
		})
	}
}

func TestFailureLogs(t *testing.T) {
	log, lb := newLogger()
	s := newTestSet(t, &Config{Name: "api", Targets: fakeTargets(1), Retries: 3}, Options{Logger: log})
	tgt := s.Targets()[0]
	try := func(r Result, err error) {
		var a Attempt
		s.Begin(&a, time.Now(), nil)
		got := a.Next()
		if got == nil {
			t.Fatal("Next() = nil, want the target")
		}
		a.Failed(got, r, false, err)
	}
	try(ConnectFailed, errors.New("connection refused"))
	try(ConnectFailed, errors.New("connection refused"))
	if n := lb.count("target refusing connections", "upstream=api", "target="+tgt.URL, "connection refused"); n != 1 {
		t.Errorf("%d lines \"target refusing connections\" after two refusals, want 1:\n%s", n, lb)
	}
	try(TimedOut, nil)
	if !lb.has("target timing out", "unknown error") {
		t.Errorf("no \"target timing out\" line after a timeout:\n%s", lb)
	}
	try(BadResponse, errors.New("bad accept"))
	if !lb.has("target breaking connections", "bad accept") {
		t.Errorf("no \"target breaking connections\" line after a bad response:\n%s", lb)
	}
	try(Busy, nil)
	try(Aborted, nil)
	var a Attempt
	s.Begin(&a, time.Now(), nil)
	got := a.Next()
	a.Responded(got, 200)
	got.Release()
	if !lb.has("target answering again", "status=200") {
		t.Errorf("no \"target answering again\" line after a response:\n%s", lb)
	}
	a.Responded(got, 200)
	if n := lb.count("target answering again"); n != 1 {
		t.Errorf("%d lines \"target answering again\", want 1", n)
	}
	try(ConnectFailed, errors.New("connection refused"))
	if n := lb.count("target refusing connections"); n != 2 {
		t.Errorf("%d lines \"target refusing connections\" after it answered and refused again, want 2", n)
	}
}
