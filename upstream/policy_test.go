package upstream

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSmoothSchedule(t *testing.T) {
	cases := []struct {
		name    string
		weights []int
		want    []uint32
	}{
		{"none", nil, nil},
		{"one", []int{7}, []uint32{0}},
		// nginx's example in ngx_http_upstream_round_robin.c: a a b a c a a.
		{"nginx 5 1 1", []int{5, 1, 1}, []uint32{0, 0, 1, 0, 2, 0, 0}},
		// Worked by hand with nginx's rule (add weights, take the first
		// largest, subtract the total).
		{"1 2 3", []int{1, 2, 3}, []uint32{2, 1, 0, 2, 1, 2}},
		{"equal", []int{1, 1, 1, 1}, []uint32{0, 1, 2, 3}},
		{"equal large", []int{200, 200, 200}, []uint32{0, 1, 2}},
		{"common divisor", []int{2, 4}, []uint32{1, 0, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := smoothSchedule(tc.weights); !slices.Equal(got, tc.want) {
				t.Errorf("smoothSchedule(%v) = %v, want %v", tc.weights, got, tc.want)
			}
		})
	}
}

// TestSmoothScheduleCounts checks that one cycle holds each index exactly
// its weight divided by the weights' common divisor, for seeded random
// weight lists.
func TestSmoothScheduleCounts(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for i := range 200 {
		n := 1 + r.IntN(12)
		weights := make([]int, n)
		for j := range weights {
			weights[j] = 1 + r.IntN(MaxWeight)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			seq := smoothSchedule(weights)
			g := 0
			for _, w := range weights {
				g = gcd(g, w)
			}
			counts := make([]int, n)
			for _, x := range seq {
				counts[x]++
			}
			for j, w := range weights {
				if counts[j] != w/g {
					t.Errorf("smoothSchedule(%v): index %d appears %d times, want %d", weights, j, counts[j], w/g)
				}
			}
		})
	}
}

// TestSmoothScheduleScaled checks that weights summing to more than
// maxSchedule give a bounded schedule in which every target still appears.
func TestSmoothScheduleScaled(t *testing.T) {
	weights := make([]int, 257)
	for i := range weights {
		weights[i] = MaxWeight
	}
	weights[256] = 1 // common divisor 1: the sum is 256·256+1 > maxSchedule
	seq := smoothSchedule(weights)
	if len(seq) > maxSchedule {
		t.Errorf("len(smoothSchedule) = %d, want at most %d", len(seq), maxSchedule)
	}
	counts := make([]int, len(weights))
	for _, x := range seq {
		counts[x]++
	}
	for i, c := range counts {
		if c == 0 {
			t.Fatalf("index %d (weight %d) never appears in the scaled schedule", i, weights[i])
		}
	}
	if counts[0] <= counts[256] {
		t.Errorf("weight %d appears %d times, weight 1 appears %d times: want more", MaxWeight, counts[0], counts[256])
	}
}

// TestRoundRobinWeights: the counts are exact, not approximate: with one
// goroutine each full cycle of the schedule gives each target exactly its
// weight, and every case picks a whole number of cycles.
func TestRoundRobinWeights(t *testing.T) {
	cases := []struct {
		name    string
		weights []int
		picks   int
		want    []int
	}{
		{"1 2 3", []int{1, 2, 3}, 600, []int{100, 200, 300}},
		{"equal", []int{1, 1, 1, 1}, 400, []int{100, 100, 100, 100}},
		{"equal heavy", []int{10, 10}, 200, []int{100, 100}},
		{"5 1 1", []int{5, 1, 1}, 700, []int{500, 100, 100}},
		{"common divisor", []int{2, 6}, 400, []int{100, 300}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSet(t, &Config{Policy: RoundRobin, Targets: fakeTargets(len(tc.weights), tc.weights...)}, Options{})
			counts := map[string]int{}
			for range tc.picks {
				tgt := pickRelease(s, nil)
				if tgt == nil {
					t.Fatal("Next() = nil, want a target")
				}
				counts[tgt.URL]++
			}
			for i, tgt := range s.Targets() {
				if counts[tgt.URL] != tc.want[i] {
					t.Errorf("target %s (weight %d) picked %d times, want %d", tgt.URL, tc.weights[i], counts[tgt.URL], tc.want[i])
				}
				if tgt.Active() != 0 {
					t.Errorf("%s Active() = %d after every Release, want 0", tgt.URL, tgt.Active())
				}
			}
		})
	}
}

func TestRoundRobinEqualOrder(t *testing.T) {
	s := newTestSet(t, &Config{Policy: RoundRobin, Targets: fakeTargets(4)}, Options{})
	all := s.Targets()
	first := pickRelease(s, nil)
	i := slices.Index(all, first)
	for k := 1; k < 12; k++ {
		want := all[(i+k)%len(all)]
		if got := pickRelease(s, nil); got != want {
			t.Fatalf("pick %d: Next() = %q, want %q (targets in turn)", k, u(got), want.URL)
		}
	}
}

func TestRoundRobinSkipsDown(t *testing.T) {
	s := newTestSet(t, &Config{Policy: RoundRobin, Targets: fakeTargets(3)}, Options{})
	all := s.Targets()
	setDown(s, all[1], downUnhealthy, true)
	counts := map[*Target]int{}
	for range 300 {
		counts[pickRelease(s, nil)]++
	}
	if counts[all[1]] != 0 {
		t.Errorf("down target %s picked %d times, want 0", all[1].URL, counts[all[1]])
	}
	for _, i := range []int{0, 2} {
		if counts[all[i]] != 150 {
			t.Errorf("target %s picked %d times, want 150 (exactly half)", all[i].URL, counts[all[i]])
		}
	}
	setDown(s, all[1], downUnhealthy, false)
	clear(counts)
	for range 300 {
		counts[pickRelease(s, nil)]++
	}
	for _, tgt := range all {
		if counts[tgt] != 100 {
			t.Errorf("after it came back: target %s picked %d times, want 100", tgt.URL, counts[tgt])
		}
	}
}

func TestRoundRobinAllDown(t *testing.T) {
	s := newTestSet(t, &Config{Policy: RoundRobin, Targets: fakeTargets(2)}, Options{})
	for _, tgt := range s.Targets() {
		setDown(s, tgt, downEjected, true)
	}
	if got := pick(s, nil); got != nil {
		t.Errorf("Next() = %q with every target down, want nil", u(got))
	}
}

func TestLeastConnSessions(t *testing.T) {
	s := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(3)}, Options{})
	all := s.Targets()
	held := map[*Target]int{}
	for range 30 {
		tgt := openSession(s)
		if tgt == nil {
			t.Fatal("Next() = nil, want a target")
		}
		held[tgt]++
	}
	for _, tgt := range all {
		if tgt.Sessions() != 10 || tgt.Active() != 10 {
			t.Errorf("%s: Sessions() = %d, Active() = %d after 30 sessions, want 10 and 10", tgt.URL, tgt.Sessions(), tgt.Active())
		}
	}
	drained := all[1]
	for range 10 {
		drained.SessionClosed()
	}
	for i := range 10 {
		if got := openSession(s); got != drained {
			t.Fatalf("session %d after closing 10 on %s: Next() = %q, want %q", i, drained.URL, u(got), drained.URL)
		}
	}
	for _, tgt := range all {
		if tgt.Sessions() != 10 {
			t.Errorf("%s Sessions() = %d, want 10", tgt.URL, tgt.Sessions())
		}
	}
}

// TestLeastConnWeights: weights 1 and 3 split sessions exactly 1:3 after
// every 4 sessions: a target is taken only while its load per weight is
// the lowest, so the loads move from (k, 3k) to (k+1, 3k+3).
func TestLeastConnWeights(t *testing.T) {
	s := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(2, 1, 3)}, Options{})
	all := s.Targets()
	for k := 1; k <= 10; k++ {
		for range 4 {
			if openSession(s) == nil {
				t.Fatal("Next() = nil, want a target")
			}
		}
		if all[0].Sessions() != int64(k) || all[1].Sessions() != int64(3*k) {
			t.Fatalf("after %d sessions: Sessions() = %d and %d, want %d and %d", 4*k, all[0].Sessions(), all[1].Sessions(), k, 3*k)
		}
	}
}

// TestLeastConnCountsRequests: requests in flight count as load too.
func TestLeastConnCountsRequests(t *testing.T) {
	s := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(2)}, Options{})
	first := pick(s, nil) // held: a request in flight
	for range 5 {
		other := pickRelease(s, nil)
		if other == first {
			t.Fatalf("Next() = %q, which has a request in flight, want the idle target", u(other))
		}
	}
	first.Release()
}

// TestLeastConnTies: tied targets share new picks at random. With a fixed
// seed the split is deterministic; the tolerance (±15 % of the mean, about
// 5.5 standard deviations of a fair split) documents what is expected of
// any seed.
func TestLeastConnTies(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			s := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(4)}, Options{Rand: seededRand(seed)})
			counts := map[*Target]int{}
			for range 4000 {
				counts[pickRelease(s, nil)]++ // released: every pick is a 4-way tie
			}
			for _, tgt := range s.Targets() {
				if c := counts[tgt]; c < 850 || c > 1150 {
					t.Errorf("%s picked %d of 4000 times, want 1000 ± 150", tgt.URL, c)
				}
			}
		})
	}
	t.Run("same seed same picks", func(t *testing.T) {
		a := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(4)}, Options{Rand: seededRand(9)})
		b := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(4)}, Options{Rand: seededRand(9)})
		for i := range 100 {
			ta, tb := pickRelease(a, nil), pickRelease(b, nil)
			if ta.URL != tb.URL {
				t.Fatalf("pick %d: Next() = %q and %q with the same seed, want the same", i, u(ta), u(tb))
			}
		}
	})
	t.Run("tie with a busy target", func(t *testing.T) {
		s := newTestSet(t, &Config{Policy: LeastConn, Targets: fakeTargets(3)}, Options{Rand: seededRand(4)})
		busy := s.Targets()[0]
		busy.st.active.Add(1) // one request in flight on it
		defer busy.Release()
		counts := map[*Target]int{}
		for range 1000 {
			counts[pickRelease(s, nil)]++
		}
		if counts[busy] != 0 {
			t.Errorf("busy target picked %d times, want 0", counts[busy])
		}
		for _, tgt := range s.Targets()[1:] {
			if c := counts[tgt]; c < 400 || c > 600 {
				t.Errorf("%s picked %d of 1000 times, want 500 ± 100", tgt.URL, c)
			}
		}
	})
}

// openSessionOn opens a session on want, releasing the other targets the
// policy hands out on the way.
func openSessionOn(t *testing.T, s *Set, want *Target) {
	t.Helper()
	for range 10000 {
		got := pick(s, nil)
		if got == want {
			got.SessionOpened()
			return
		}
		if got != nil {
			got.Release()
		}
	}
	t.Fatalf("Next() never returned %s", want.URL)
}

// TestRandomPrefersLessLoaded: a target picked by power of two choices is
// taken only when both choices are it (1 in 9 with three targets) or the
// other is more loaded.
func TestRandomPrefersLessLoaded(t *testing.T) {
	s := newTestSet(t, &Config{Policy: Random, Targets: fakeTargets(3)}, Options{Rand: seededRand(5)})
	all := s.Targets()
	loaded := all[0]
	for range 100 {
		openSessionOn(t, s, loaded)
	}
	t.Run("requests", func(t *testing.T) {
		counts := map[*Target]int{}
		for range 900 {
			counts[pickRelease(s, nil)]++
		}
		// Expected: 100 for the loaded target, 400 for each other one.
		for _, tgt := range all[1:] {
			if 2*counts[loaded] >= counts[tgt] {
				t.Errorf("loaded target picked %d times, %s %d times: want under half as many", counts[loaded], tgt.URL, counts[tgt])
			}
		}
	})
	t.Run("sessions", func(t *testing.T) {
		counts := map[*Target]int{}
		for range 150 {
			counts[openSession(s)]++
		}
		for _, tgt := range all[1:] {
			if counts[loaded] >= counts[tgt] {
				t.Errorf("loaded target got %d new sessions, %s %d: want fewer", counts[loaded], tgt.URL, counts[tgt])
			}
		}
	})
}

// TestRandomSpread: equal targets share picks. Released picks are all ties
// and split like fair dice (±10 % of the mean, about 3.9 standard
// deviations); held sessions are balanced far tighter by the two choices
// (±5 %).
func TestRandomSpread(t *testing.T) {
	cases := []struct {
		name string
		hold bool
		tol  int
	}{
		{"released", false, 100},
		{"held", true, 50},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSet(t, &Config{Policy: Random, Targets: fakeTargets(3)}, Options{Rand: seededRand(11)})
			counts := map[*Target]int{}
			for range 3000 {
				var tgt *Target
				if tc.hold {
					tgt = openSession(s)
				} else {
					tgt = pickRelease(s, nil)
				}
				counts[tgt]++
			}
			for _, tgt := range s.Targets() {
				if c := counts[tgt]; c < 1000-tc.tol || c > 1000+tc.tol {
					t.Errorf("%s picked %d of 3000 times, want 1000 ± %d", tgt.URL, c, tc.tol)
				}
			}
		})
	}
}

func TestRandomSkipsDown(t *testing.T) {
	s := newTestSet(t, &Config{Policy: Random, Targets: fakeTargets(3)}, Options{Rand: seededRand(6)})
	down := s.Targets()[2]
	setDown(s, down, downEjected, true)
	for range 500 {
		if got := pickRelease(s, nil); got == down || got == nil {
			t.Fatalf("Next() = %q, want one of the two targets in rotation", u(got))
		}
	}
}

func hashKeys(n int) [][]byte {
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "user-%d", i)
	}
	return keys
}

func hashConfig(tcs []TargetConfig) *Config {
	return &Config{Policy: Hash, Key: Key{Kind: KeyHeader, Name: "X-User"}, Targets: tcs}
}

// TestHashRemoveTarget: removing one of ten targets moves only the keys it
// held; they spread over the nine others.
func TestHashRemoveTarget(t *testing.T) {
	const n = 10
	tcs := fakeTargets(n)
	all := newTestSet(t, hashConfig(tcs), Options{})
	removed := tcs[3]
	rest := slices.Delete(slices.Clone(tcs), 3, 4)
	less := newTestSet(t, hashConfig(rest), Options{})

	moved := map[string]int{}
	own := 0
	for _, key := range hashKeys(10000) {
		before, after := pickRelease(all, key).URL, pickRelease(less, key).URL
		if before != removed.URL() {
			if after != before {
				t.Fatalf("key %q moved from %s to %s, want it kept: only the removed target's keys move", key, before, after)
			}
			continue
		}
		own++
		moved[after]++
	}
	// 10,000 keys over 10 targets: 1000 expected, ±300 is over 9σ.
	if own < 700 || own > 1300 {
		t.Errorf("removed target held %d of 10000 keys, want about 1000", own)
	}
	for _, tc := range rest {
		if c := moved[tc.URL()]; c < own/n/2 {
			t.Errorf("%s got %d of the removed target's %d keys, want about %d", tc.URL(), c, own, own/(n-1))
		}
	}
}

// TestHashReplicas: two separately built sets, one with the targets in
// reverse order and its own random source, agree on every key.
func TestHashReplicas(t *testing.T) {
	cases := []struct {
		name    string
		weights []int
	}{
		{"equal", nil},
		{"weighted", []int{1, 2, 3, 4, 5, 6, 7, 8}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tcs := fakeTargets(8, tc.weights...)
			rev := slices.Clone(tcs)
			slices.Reverse(rev)
			a := newTestSet(t, hashConfig(tcs), Options{Rand: seededRand(1)})
			b := newTestSet(t, hashConfig(rev), Options{Rand: seededRand(2)})
			for _, key := range hashKeys(10000) {
				if ta, tb := pickRelease(a, key), pickRelease(b, key); ta.URL != tb.URL {
					t.Fatalf("key %q: Next() = %q on one replica, %q on the other", key, u(ta), u(tb))
				}
			}
		})
	}
}

// TestHashWeights: weights 1 and 3 give 25 % and 75 % of the keys, ±2
// points (about 4.6σ over 10,000 keys; the hash is fixed, so the result is
// too).
func TestHashWeights(t *testing.T) {
	s := newTestSet(t, hashConfig(fakeTargets(2, 1, 3)), Options{})
	heavy := s.Targets()[1]
	n := 0
	for _, key := range hashKeys(10000) {
		if pickRelease(s, key) == heavy {
			n++
		}
	}
	if n < 7300 || n > 7700 {
		t.Errorf("weight-3 target got %d of 10000 keys, want 7500 ± 200", n)
	}
}

func TestHashNoKeyRoundRobin(t *testing.T) {
	s := newTestSet(t, hashConfig(fakeTargets(3)), Options{})
	counts := map[*Target]int{}
	var prev *Target
	for i := range 300 {
		tgt := pickRelease(s, nil)
		if tgt == prev {
			t.Fatalf("pick %d: Next() = %q twice in a row without a key, want round robin", i, u(tgt))
		}
		prev = tgt
		counts[tgt]++
	}
	for _, tgt := range s.Targets() {
		if counts[tgt] != 100 {
			t.Errorf("%s picked %d of 300 times without a key, want 100", tgt.URL, counts[tgt])
		}
	}
	// An empty key is no key.
	if a, b := pickRelease(s, []byte{}), pickRelease(s, []byte{}); a == b {
		t.Errorf("Next() = %q twice with an empty key, want round robin", u(a))
	}
}

// TestHashDownTarget: while a target is down its keys go to their second
// choice (the target a set without it picks); the other keys stay; they
// all come back when it is up.
func TestHashDownTarget(t *testing.T) {
	tcs := fakeTargets(5)
	s := newTestSet(t, hashConfig(tcs), Options{})
	without := newTestSet(t, hashConfig(tcs[1:]), Options{})
	down := s.Targets()[0]
	keys := hashKeys(2000)
	first := make([]*Target, len(keys))
	for i, key := range keys {
		first[i] = pickRelease(s, key)
	}
	setDown(s, down, downEjected, true)
	for i, key := range keys {
		got := pickRelease(s, key)
		switch {
		case first[i] != down && got != first[i]:
			t.Fatalf("key %q: Next() = %q while another target is down, want %q", key, u(got), first[i].URL)
		case first[i] == down && got.URL != pickRelease(without, key).URL:
			t.Fatalf("key %q of the down target: Next() = %q, want its second choice %q", key, u(got), pickRelease(without, key).URL)
		}
	}
	setDown(s, down, downEjected, false)
	for i, key := range keys {
		if got := pickRelease(s, key); got != first[i] {
			t.Fatalf("key %q after the target came back: Next() = %q, want %q", key, u(got), first[i].URL)
		}
	}
}

// TestHashFixed pins the hash functions: replicas of different versions
// must rank targets alike, so a change here is a breaking change.
func TestHashFixed(t *testing.T) {
	for _, s := range []string{"", "a", "user-1", "http://10.0.0.1:8080"} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got, want := fnv1a(fnvOffset, s), h.Sum64(); got != want {
			t.Errorf("fnv1a(%q) = %#x, want %#x (hash/fnv)", s, got, want)
		}
		if got, want := fnv1aBytes(fnvOffset, []byte(s)), h.Sum64(); got != want {
			t.Errorf("fnv1aBytes(%q) = %#x, want %#x (hash/fnv)", s, got, want)
		}
	}
	// MurmurHash3's fmix64 maps 0 to 0 and is a bijection; two values pinned.
	fm := []struct{ in, want uint64 }{
		{0, 0},
		{1, 0xb456bcfc34c2cb2c},
		{0xffffffffffffffff, 0x64b5720b4b825f21},
	}
	for _, c := range fm {
		if got := fmix64(c.in); got != c.want {
			t.Errorf("fmix64(%#x) = %#x, want %#x", c.in, got, c.want)
		}
	}
	tgt := &Target{URL: "http://10.0.0.1:8080", hrw: fnv1a(fnvOffset, "http://10.0.0.1:8080")}
	if got, want := hrwHash(fnv1a(fnvOffset, "user-1"), tgt), fmix64(fnv1a(fnvOffset, "user-1")^fnv1a(fnvOffset, "http://10.0.0.1:8080")); got != want {
		t.Errorf("hrwHash = %#x, want %#x", got, want)
	}
}

func TestHRWScore(t *testing.T) {
	// Monotonic in the hash for one weight: equal weights may compare raw
	// hashes (the table's equal shortcut) and agree with the scores.
	prev := -1.0
	// u keeps the top 52 bits of the hash: steps of 1<<12 and more.
	for _, h := range []uint64{0, 1 << 12, 1 << 40, 1 << 62, math.MaxUint64 >> 1, math.MaxUint64 - 1<<12, math.MaxUint64} {
		sc := hrwScore(h, 1)
		if !(sc > prev) || math.IsInf(sc, 0) || math.IsNaN(sc) {
			t.Errorf("hrwScore(%#x, 1) = %v after %v, want finite and increasing", h, sc, prev)
		}
		prev = sc
	}
	if a, b := hrwScore(1<<60, 1), hrwScore(1<<60, 2); b != 2*a {
		t.Errorf("hrwScore weight 2 = %v, want twice weight 1's %v", b, a)
	}
}

// TestHRWScoreTopHash: the highest hashes must score highest. For
// h>>11 == 2^53-1, (2^53-1)+0.5 rounds to 2^53 in float64, so u is 1,
// -ln(u) is -0 and the score is -Inf: the best possible hash loses to
// every other. One (key, target) pair in 2^53 is affected, so it is rare,
// but the equal-weights shortcut (raw hashes) and the weighted scores then
// disagree on the winner.
func TestHRWScoreTopHash(t *testing.T) {
	for _, h := range []uint64{math.MaxUint64, math.MaxUint64 - 1<<10} {
		if sc, below := hrwScore(h, 1), hrwScore(math.MaxUint64-1<<11, 1); !(sc >= below) || math.IsInf(sc, 0) {
			t.Errorf("hrwScore(%#x, 1) = %v, want finite and at least %v", h, sc, below)
		}
	}
}

func cookieConfig(name, secret string, tcs []TargetConfig) *Config {
	return &Config{Name: name, Policy: Cookie, Sticky: Sticky{Cookie: "wsg", Secret: secret}, Targets: tcs}
}

func TestCookieFirstRequest(t *testing.T) {
	s := newTestSet(t, cookieConfig("api", "s3cret", fakeTargets(3)), Options{})
	if got, want := s.Key(), (Key{Kind: KeyCookie, Name: "wsg"}); got != want {
		t.Errorf("Key() = %+v, want %+v", got, want)
	}
	seen := map[*Target]bool{}
	for range 3 {
		var a Attempt
		s.Begin(&a, time.Now(), nil)
		tgt := a.Next()
		if tgt == nil {
			t.Fatal("Next() = nil, want a target")
		}
		seen[tgt] = true
		v := tgt.cookie
		if len(v) != 16 {
			t.Errorf("cookie value %q has %d characters, want 16 hex digits", v, len(v))
		}
		if got, want := a.StickyCookie(tgt, false), "wsg="+v+"; Path=/; HttpOnly; SameSite=Lax"; got != want {
			t.Errorf("StickyCookie(false) = %q, want %q", got, want)
		}
		if got, want := a.StickyCookie(tgt, true), "wsg="+v+"; Path=/; HttpOnly; SameSite=Lax; Secure"; got != want {
			t.Errorf("StickyCookie(true) = %q, want %q", got, want)
		}
		for _, leak := range []string{"10.0.0", "8080", "http"} {
			if strings.Contains(v, leak) {
				t.Errorf("cookie value %q contains %q from the target's address", v, leak)
			}
		}
		tgt.Release()
	}
	if len(seen) != 3 {
		t.Errorf("3 requests without a cookie went to %d targets, want 3 (round robin)", len(seen))
	}
}

func TestCookieSticks(t *testing.T) {
	s := newTestSet(t, cookieConfig("api", "s3cret", fakeTargets(3)), Options{})
	for _, want := range s.Targets() {
		key := []byte(want.cookie)
		for range 10 {
			var a Attempt
			s.Begin(&a, time.Now(), key)
			got := a.Next()
			if got != want {
				t.Fatalf("Next() with its cookie = %q, want %q", u(got), want.URL)
			}
			if c := a.StickyCookie(got, false); c != "" {
				t.Errorf("StickyCookie() = %q for the target the cookie names, want \"\"", c)
			}
			got.Release()
		}
	}
}

func TestCookieTargetDown(t *testing.T) {
	s := newTestSet(t, cookieConfig("api", "s3cret", fakeTargets(3)), Options{})
	pinned := s.Targets()[0]
	setDown(s, pinned, downUnhealthy, true)
	for range 6 {
		var a Attempt
		s.Begin(&a, time.Now(), []byte(pinned.cookie))
		got := a.Next()
		if got == nil || got == pinned {
			t.Fatalf("Next() = %q with the cookie of a down target, want another", u(got))
		}
		if c, want := a.StickyCookie(got, false), got.StickyCookie(false); c != want || c == "" {
			t.Errorf("StickyCookie() = %q, want the new target's %q", c, want)
		}
		got.Release()
	}
}

func TestCookieFailover(t *testing.T) {
	s := newTestSet(t, cookieConfig("api", "s3cret", fakeTargets(3)), Options{})
	s.cfg.Retries = 2
	pinned := s.Targets()[1]
	var a Attempt
	s.Begin(&a, time.Now(), []byte(pinned.cookie))
	if got := a.Next(); got != pinned {
		t.Fatalf("Next() = %q, want the pinned %q", u(got), pinned.URL)
	}
	a.Failed(pinned, ConnectFailed, false, nil)
	got := a.Next()
	if got == nil || got == pinned {
		t.Fatalf("Next() after the pinned target failed = %q, want another target", u(got))
	}
	if c := a.StickyCookie(got, false); c != got.StickyCookie(false) {
		t.Errorf("StickyCookie() = %q, want %q (the client is re-pinned)", c, got.StickyCookie(false))
	}
	got.Release()
}

func TestCookieUnknownValue(t *testing.T) {
	s := newTestSet(t, cookieConfig("api", "s3cret", fakeTargets(3)), Options{})
	var a Attempt
	s.Begin(&a, time.Now(), []byte("0123456789abcdef"))
	got := a.Next()
	if got == nil {
		t.Fatal("Next() = nil with an unknown cookie value, want a target")
	}
	if c := a.StickyCookie(got, false); c == "" {
		t.Error("StickyCookie() = \"\" for an unknown cookie value, want a new cookie")
	}
	got.Release()
}

func TestCookieValues(t *testing.T) {
	tcs := fakeTargets(4)
	rev := slices.Clone(tcs)
	slices.Reverse(rev)
	values := func(s *Set) map[string]string {
		m := map[string]string{}
		for _, t := range s.Targets() {
			m[t.URL] = t.cookie
		}
		return m
	}
	cases := []struct {
		name       string
		a, b       *Config
		wantSameTo bool
	}{
		{"same secret", cookieConfig("api", "k1", tcs), cookieConfig("other", "k1", rev), true},
		{"different secrets", cookieConfig("api", "k1", tcs), cookieConfig("api", "k2", tcs), false},
		{"no secret same name", cookieConfig("api", "", tcs), cookieConfig("api", "", rev), true},
		{"no secret other name", cookieConfig("api", "", tcs), cookieConfig("web", "", tcs), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			va, vb := values(newTestSet(t, tc.a, Options{})), values(newTestSet(t, tc.b, Options{}))
			for url, v := range va {
				if same := vb[url] == v; same != tc.wantSameTo {
					t.Errorf("cookie values of %s: %q and %q, want equal: %v", url, v, vb[url], tc.wantSameTo)
				}
			}
			distinct := map[string]bool{}
			for _, v := range va {
				distinct[v] = true
			}
			if len(distinct) != len(va) {
				t.Errorf("cookie values %v are not distinct", va)
			}
		})
	}
	// Pinned: a change breaks every client's stickiness across an upgrade.
	if got, want := cookieValue([]byte("k1"), "http://10.0.0.1:8080"), cookieValueGolden; got != want {
		t.Errorf("cookieValue = %q, want %q", got, want)
	}
}

// cookieValueGolden is HMAC-SHA256("k1", "http://10.0.0.1:8080")[:8] in hex,
// computed outside Go (Python hmac).
const cookieValueGolden = "447486bf8df19357"

func TestStickyCookieOtherPolicies(t *testing.T) {
	for _, p := range []Policy{RoundRobin, LeastConn, Random, Hash} {
		t.Run(p.String(), func(t *testing.T) {
			cfg := &Config{Policy: p, Targets: fakeTargets(2), Sticky: Sticky{Cookie: "wsg"}, Key: Key{Kind: KeyHeader, Name: "X-User"}}
			s := newTestSet(t, cfg, Options{})
			var a Attempt
			s.Begin(&a, time.Now(), []byte("anything"))
			tgt := a.Next()
			if c := a.StickyCookie(tgt, true); c != "" {
				t.Errorf("Attempt.StickyCookie() = %q, want \"\"", c)
			}
			if c := tgt.StickyCookie(false); c != "" {
				t.Errorf("Target.StickyCookie() = %q, want \"\"", c)
			}
			tgt.Release()
			wantKey := Key{}
			if p == Hash {
				wantKey = cfg.Key
			}
			if got := s.Key(); got != wantKey {
				t.Errorf("Key() = %+v, want %+v", got, wantKey)
			}
		})
	}
}
