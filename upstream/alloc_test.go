package upstream

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// allocCases are the request paths the allocation test and the benchmark
// run: one per policy, hash with equal and unequal weights (raw hashes,
// then scores), cookie with a valid cookie.
var allocCases = []struct {
	name    string
	policy  Policy
	weights []int
}{
	{"round_robin", RoundRobin, nil},
	{"round_robin weighted", RoundRobin, []int{1, 2, 3, 4, 5, 6, 7, 8}},
	{"least_conn", LeastConn, nil},
	{"random", Random, nil},
	{"hash", Hash, nil},
	{"hash weighted", Hash, []int{1, 2, 3, 4, 5, 6, 7, 8}},
	{"cookie", Cookie, nil},
}

// allocSet returns a set of 8 targets for c with the production defaults
// (math/rand/v2 as the random source).
func allocSet(t testing.TB, policy Policy, weights []int) (*Set, []byte) {
	cfg := policyConfig(policy, fakeTargets(8, weights...))
	cfg.Passive = &Passive{Failures: 1000, Window: time.Minute, EjectFor: time.Second, MaxEjectFor: time.Second, MaxEjectPercent: 50, Count5xx: true}
	log, _ := newLogger()
	s := New(cfg, Options{Logger: log})
	t.Cleanup(s.Close)
	return s, policyKey(s)
}

// TestRequestPathAllocs: one request's balancing (Begin, Next, Responded,
// Release) allocates nothing. The proxy's steady-state request path
// allocates nothing for balancing, and its own allocation tests count on
// that: every request and every WebSocket handshake goes through here, so
// one allocation would be paid millions of times a minute in GC work.
func TestRequestPathAllocs(t *testing.T) {
	for _, c := range allocCases {
		t.Run(c.name, func(t *testing.T) {
			s, key := allocSet(t, c.policy, c.weights)
			now := time.Now()
			allocs := testing.AllocsPerRun(1000, func() {
				var a Attempt
				s.Begin(&a, now, key)
				tgt := a.Next()
				a.Responded(tgt, 200)
				tgt.Release()
			})
			if allocs != 0 {
				t.Errorf("Begin, Next, Responded, Release: %v allocations, want 0", allocs)
			}
		})
	}
}

// TestFailoverAllocs: a failover (a refused connect, then the next
// target, refused too) allocates nothing either once every target's
// "refusing" line is logged. (A target that answers between two refusals
// logs each change, by design: that is not the steady state.)
func TestFailoverAllocs(t *testing.T) {
	for _, c := range allocCases {
		t.Run(c.name, func(t *testing.T) {
			s, key := allocSet(t, c.policy, c.weights)
			s.cfg.Retries = 1
			s.cfg.Passive = nil // an ejection allocates (a log line, a new table): not the steady state
			errRefused := errors.New("connection refused")
			now := time.Now()
			run := func() {
				var a Attempt
				s.Begin(&a, now, key)
				tgt := a.Next()
				a.Failed(tgt, ConnectFailed, false, errRefused)
				if next := a.Next(); next != nil {
					a.Failed(next, ConnectFailed, false, errRefused)
				}
			}
			for range 2 * len(s.Targets()) {
				run() // every target logs its "refusing" line once
			}
			if allocs := testing.AllocsPerRun(1000, run); allocs != 0 {
				t.Errorf("Begin, Next, Failed, Next, Failed: %v allocations, want 0", allocs)
			}
		})
	}
}

func BenchmarkNext(b *testing.B) {
	for _, c := range allocCases {
		b.Run(c.name, func(b *testing.B) {
			s, key := allocSet(b, c.policy, c.weights)
			now := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				var a Attempt
				s.Begin(&a, now, key)
				tgt := a.Next()
				a.Responded(tgt, 200)
				tgt.Release()
			}
		})
	}
}

// BenchmarkNextTargets shows how a pick scales with the number of targets
// (least_conn and hash look at every target).
func BenchmarkNextTargets(b *testing.B) {
	for _, p := range []Policy{RoundRobin, LeastConn, Random, Hash} {
		for _, n := range []int{2, 16, 128} {
			b.Run(fmt.Sprintf("%s/%d", p, n), func(b *testing.B) {
				cfg := policyConfig(p, fakeTargets(n))
				log, _ := newLogger()
				s := New(cfg, Options{Logger: log})
				b.Cleanup(s.Close)
				key := policyKey(s)
				now := time.Now()
				b.ReportAllocs()
				for b.Loop() {
					var a Attempt
					s.Begin(&a, now, key)
					a.Next().Release()
				}
			})
		}
	}
}
