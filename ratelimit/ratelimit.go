// Package ratelimit holds the rate limits wsgate applies: the generic cell
// rate algorithm (GCRA) on one int64 of state, and a table of such states
// by key (client addresses) that forgets keys once they are back to full.
// No I/O and no clock of its own: callers pass the time, so it is cheap
// on hot paths and exact in tests.
//
// GCRA is the token bucket written as one timestamp, the "theoretical
// arrival time" (TAT): a bucket refilling at Rate per second and holding
// Burst tokens is full when TAT ≤ now, and a request is allowed while
// TAT - now stays within (Burst-1) emission intervals. Storing one number
// instead of (tokens, last refill) keeps it one word per session leg and
// lets many keys live in a small map.
package ratelimit

import (
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// Limit is a rate (events per second) with a burst (events allowed at
// once from a full bucket). The zero Limit allows everything.
type Limit struct {
	emission  int64 // nanoseconds per event
	tolerance int64 // (burst-1) * emission: how far TAT may run ahead
}

// NewLimit returns the limit of rate events per second with a bucket of
// burst events (burst < 1 means 1). A rate ≤ 0 means no limit.
func NewLimit(rate float64, burst int) Limit {
	if rate <= 0 || math.IsNaN(rate) {
		return Limit{}
	}
	if burst < 1 {
		burst = 1
	}
	e := float64(time.Second) / rate
	if e < 1 {
		e = 1
	}
	em := int64(math.Min(e, float64(math.MaxInt64/4)))
	tol := int64(math.Min(float64(em)*float64(burst-1), float64(math.MaxInt64/4)))
	return Limit{emission: em, tolerance: tol}
}

// Enabled reports whether l limits anything.
func (l Limit) Enabled() bool { return l.emission > 0 }

// Allow reports whether one event at now (unix nanoseconds) fits the
// limit, given the state tat, and updates tat when it does. A refused
// event leaves tat as it was: refusals cost the sender no tokens. The
// caller serialises calls on one tat.
func (l Limit) Allow(tat *int64, now int64) bool {
	if l.emission == 0 {
		return true
	}
	t := max(*tat, now)
	if t-now > l.tolerance {
		return false
	}
	*tat = t + l.emission
	return true
}

// RetryAfter is how long after now (unix nanoseconds) the next event
// would be allowed, given tat: zero if it would be now.
func (l Limit) RetryAfter(tat, now int64) time.Duration {
	if l.emission == 0 {
		return 0
	}
	return time.Duration(max(tat-l.tolerance-now, 0))
}

// Keyed applies one Limit to many keys (client addresses), each with its
// own state. It is safe for concurrent use. Keys whose bucket is full
// again are forgotten by a sweep that runs, amortised, on Allow: the
// table holds only keys that sent within the last burst/rate seconds.
type Keyed[K comparable] struct {
	limit  Limit
	seed   maphash.Seed
	shards [keyedShards]keyedShard[K]
}

const keyedShards = 16

type keyedShard[K comparable] struct {
	mu        sync.Mutex
	tats      map[K]int64
	nextSweep int64
}

// NewKeyed returns a table applying l to each key.
func NewKeyed[K comparable](l Limit) *Keyed[K] {
	k := &Keyed[K]{limit: l, seed: maphash.MakeSeed()}
	for i := range k.shards {
		k.shards[i].tats = map[K]int64{}
	}
	return k
}

// Limit returns the limit k applies.
func (k *Keyed[K]) Limit() Limit { return k.limit }

// Allow reports whether one event for key at now (unix nanoseconds) fits
// the limit; when it does not, retry is how long until one would.
func (k *Keyed[K]) Allow(key K, now int64) (ok bool, retry time.Duration) {
	if !k.limit.Enabled() {
		return true, 0
	}
	sh := &k.shards[maphash.Comparable(k.seed, key)%keyedShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if now >= sh.nextSweep {
		// Forget the keys whose bucket is full again: their state says
		// nothing a fresh one would not. At most once per window, so the
		// walk costs O(1) per call amortised.
		for key, tat := range sh.tats {
			if tat <= now {
				delete(sh.tats, key)
			}
		}
		sh.nextSweep = now + k.limit.tolerance + k.limit.emission
	}
	tat := sh.tats[key]
	if !k.limit.Allow(&tat, now) {
		return false, k.limit.RetryAfter(tat, now)
	}
	sh.tats[key] = tat
	return true, 0
}

// Len returns the number of keys k remembers.
func (k *Keyed[K]) Len() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.tats)
		sh.mu.Unlock()
	}
	return n
}
