package ratelimit

import (
	"net/netip"
	"strconv"
	"testing"
	"time"
)

const sec = int64(time.Second)

// TestLimitBurstThenRate: a full bucket allows burst events at once, then
// one per 1/rate; refused events cost nothing.
func TestLimitBurstThenRate(t *testing.T) {
	l := NewLimit(10, 5) // one per 100 ms, 5 at once
	var tat int64
	now := 100 * sec
	for i := range 5 {
		if !l.Allow(&tat, now) {
			t.Fatalf("event %d of the burst refused", i+1)
		}
	}
	for i := range 3 {
		if l.Allow(&tat, now) {
			t.Fatalf("event %d past the burst allowed", i+1)
		}
	}
	if got := l.RetryAfter(tat, now); got != 100*time.Millisecond {
		t.Errorf("RetryAfter = %v, want 100ms", got)
	}
	if l.Allow(&tat, now+99*int64(time.Millisecond)) {
		t.Error("allowed 99 ms later, want 100 ms")
	}
	if !l.Allow(&tat, now+100*int64(time.Millisecond)) {
		t.Error("refused 100 ms later")
	}
	// Idle for long: the bucket is full again, not fuller.
	later := now + 60*sec
	n := 0
	for l.Allow(&tat, later) {
		n++
		if n > 100 {
			t.Fatal("no limit after an idle minute")
		}
	}
	if n != 5 {
		t.Errorf("after an idle minute %d events allowed at once, want the burst of 5", n)
	}
}

// TestLimitSteadyRate: a sender at exactly the rate is never refused; one
// at twice the rate gets half through over a long run.
func TestLimitSteadyRate(t *testing.T) {
	l := NewLimit(100, 1)
	var tat int64
	now := sec
	for i := range 1000 {
		if !l.Allow(&tat, now+int64(i)*sec/100) {
			t.Fatalf("event %d at the rate refused", i)
		}
	}
	tat = 0
	ok := 0
	for i := range 2000 {
		if l.Allow(&tat, now+int64(i)*sec/200) {
			ok++
		}
	}
	if ok != 1000 {
		t.Errorf("at twice the rate %d of 2000 allowed, want 1000", ok)
	}
}

func TestZeroLimitAllowsAll(t *testing.T) {
	var l Limit
	var tat int64
	for range 10 {
		if !l.Allow(&tat, 0) {
			t.Fatal("zero limit refused")
		}
	}
	if NewLimit(0, 10).Enabled() || NewLimit(-1, 1).Enabled() {
		t.Error("a rate ≤ 0 is enabled")
	}
	if !NewLimit(0.5, 0).Enabled() {
		t.Error("rate 0.5 not enabled")
	}
}

// TestKeyedPerKeyAndForgets: keys have their own buckets, and keys whose
// bucket refilled are forgotten.
func TestKeyedPerKeyAndForgets(t *testing.T) {
	k := NewKeyed[string](NewLimit(1, 2))
	now := 1000 * sec
	for _, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		for i := range 2 {
			if ok, _ := k.Allow(ip, now); !ok {
				t.Fatalf("%s event %d refused", ip, i)
			}
		}
		ok, retry := k.Allow(ip, now)
		if ok {
			t.Fatalf("%s third event allowed", ip)
		}
		if retry != time.Second {
			t.Errorf("%s retry = %v, want 1s", ip, retry)
		}
	}
	for i := range 500 {
		k.Allow("10.1."+strconv.Itoa(i/250)+"."+strconv.Itoa(i%250), now)
	}
	if n := k.Len(); n != 502 {
		t.Fatalf("Len = %d, want 502", n)
	}
	// Two seconds on, every bucket is full again: the next calls sweep
	// the shards they land in, and all of them once every shard is hit.
	for i := range 200 {
		k.Allow("probe"+strconv.Itoa(i), now+3*sec)
	}
	if n := k.Len(); n != 200 {
		t.Errorf("after refilling Len = %d, want 200 (only the probes)", n)
	}
}

func TestKeyedAllocs(t *testing.T) {
	k := NewKeyed[netip.Addr](NewLimit(1e9, 1<<30))
	a := netip.MustParseAddr("192.0.2.1")
	k.Allow(a, 1)
	n := testing.AllocsPerRun(1000, func() { k.Allow(a, 2) })
	if n != 0 {
		t.Errorf("Allow on a known key allocates %v times", n)
	}
}

func FuzzLimit(f *testing.F) {
	f.Add(10.0, 5, int64(0), int64(1000))
	f.Fuzz(func(t *testing.T, rate float64, burst int, start, step int64) {
		if burst > 1<<20 || step < 0 || start < 0 || start > 1<<60 || step > 1<<40 {
			return
		}
		l := NewLimit(rate, burst)
		var tat int64
		allowed := 0
		for i := range int64(50) {
			if l.Allow(&tat, start+i*step) {
				allowed++
			}
		}
		if l.Enabled() && step == 0 && allowed > max(burst, 1) {
			t.Fatalf("rate %v burst %d: %d allowed at one instant", rate, burst, allowed)
		}
		if allowed == 0 {
			t.Fatal("a fresh bucket refused its first event")
		}
	})
}
