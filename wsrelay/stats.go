package wsrelay

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// SizeBounds are the upper bounds (bytes) of the message size
// histograms' buckets; a last bucket counts larger messages.
var SizeBounds = [...]float64{64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

// sizeCounts is one direction's message size histogram: what one leg's
// peer sent. Written by the leg's pump only; read live. Counts are 32-bit
// (four billion messages in one session and one direction) to keep a
// session small; routes add them up in 64 bits.
type sizeCounts [len(SizeBounds) + 1]atomic.Uint32

// observe counts one message of n payload bytes. The bounds are powers of
// four from 64, so the bucket is a bit length away.
func (c *sizeCounts) observe(n int64) {
	i := 0
	if n > 64 {
		i = min((bits.Len64(uint64(n-1))-5)/2, len(SizeBounds))
	}
	c[i].Add(1)
}

// DurationBounds are the upper bounds (seconds) of the session duration
// histograms' buckets.
var DurationBounds = [...]float64{1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600}

// Histogram is a snapshot of a histogram: Counts[i] observations were at
// most Bounds[i] and more than the bound before (not cumulative); the last
// count is above every bound. Sum is the sum of the observations.
type Histogram struct {
	Counts []uint64
	Sum    float64
}

// FlowStats is one direction of a route: data messages, their payload
// bytes and the message size histogram (its Sum is the bytes counter, so
// it includes messages still in progress).
type FlowStats struct {
	Messages int64
	Bytes    int64
	Sizes    Histogram
}

// EndKey classifies ended sessions: the close code of whoever closed
// first, and who that was ("client", "backend" or "wsgate"). Code 1006
// stands for a connection that ended without a close frame.
type EndKey struct {
	Code uint16
	By   string
}

// RouteStats is what the sessions of one route carried, live ones
// included: what the metrics expose.
type RouteStats struct {
	Route    string
	Upstream string
	// Open sessions now; Opened since the start.
	Open        int
	Opened      int64
	FromClient  FlowStats
	FromBackend FlowStats
	// Ended counts the sessions that ended, by how.
	Ended map[EndKey]int64
	// Durations of the ended sessions, in seconds.
	Durations Histogram
	// What the policies did to each side.
	ClientActions, BackendActions Actions
}

// routeTotals holds what the ended sessions of a route carried and how
// they ended. Guarded by the registry's mu.
type routeTotals struct {
	opened      int64
	fromClient  flowTotals
	fromBackend flowTotals
	ended       map[EndKey]int64
	durations   [len(DurationBounds) + 1]uint64
	durationSum float64
}

type flowTotals struct {
	messages, bytes int64
	sizes           [len(SizeBounds) + 1]uint64
}

// add adds what leg l's peer sent.
func (f *flowTotals) add(l *leg) {
	f.messages += l.messages.Load()
	f.bytes += l.bytes.Load()
	for i := range l.sizes {
		f.sizes[i] += uint64(l.sizes[i].Load())
	}
}

// stats returns the totals as FlowStats. The size histogram's sum is the
// bytes counter: the payload of messages still in progress is in it too.
func (f *flowTotals) stats() FlowStats {
	return FlowStats{
		Messages: f.messages,
		Bytes:    f.bytes,
		Sizes:    Histogram{Counts: append([]uint64(nil), f.sizes[:]...), Sum: float64(f.bytes)},
	}
}

// observeDuration counts one ended session of duration d.
func (t *routeTotals) observeDuration(d time.Duration) {
	sec := d.Seconds()
	i := 0
	for i < len(DurationBounds) && sec > DurationBounds[i] {
		i++
	}
	t.durations[i]++
	t.durationSum += sec
}

// Stats returns what every route's sessions carried, live sessions
// included, for the metrics: every route Route ever returned, with zero
// counts until a session uses it.
func (r *Registry) Stats() []RouteStats {
	// Under the lock only copies: the live sessions and each route's
	// totals, taken together, so that a session ending meanwhile counts
	// once (its final counters in the live sum, not in the copied
	// totals). The sums, which take each session's endMu, come after:
	// adding and removing sessions does not wait for a walk over
	// every session.
	type routeCopy struct {
		rt     *Route
		totals routeTotals
	}
	r.mu.Lock()
	list := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	routes := make([]routeCopy, 0, len(r.routes))
	for _, rt := range r.routes {
		c := routeCopy{rt: rt, totals: rt.totals}
		c.totals.ended = make(map[EndKey]int64, len(rt.totals.ended))
		for k, v := range rt.totals.ended {
			c.totals.ended[k] = v
		}
		routes = append(routes, c)
	}
	r.mu.Unlock()

	type acc struct {
		open       int
		fromClient flowTotals
		fromBack   flowTotals
	}
	live := make(map[*Route]*acc, len(routes))
	for _, s := range list {
		a := live[s.route]
		if a == nil {
			a = &acc{}
			live[s.route] = a
		}
		a.open++
		if c := s.clientLeg(); c != nil {
			a.fromClient.add(c)
		}
		a.fromBack.add(s.backend)
	}
	out := make([]RouteStats, 0, len(routes))
	for _, rc := range routes {
		t := &rc.totals
		fc, fb := t.fromClient, t.fromBackend
		st := RouteStats{Route: rc.rt.Name, Upstream: rc.rt.Upstream, Opened: t.opened, Ended: t.ended}
		if a := live[rc.rt]; a != nil {
			st.Open = a.open
			fc.merge(&a.fromClient)
			fb.merge(&a.fromBack)
		}
		st.FromClient, st.FromBackend = fc.stats(), fb.stats()
		st.Durations = Histogram{Counts: append([]uint64(nil), t.durations[:]...), Sum: t.durationSum}
		st.ClientActions, st.BackendActions = rc.rt.clientActions.snapshot(), rc.rt.backendActions.snapshot()
		out = append(out, st)
	}
	return out
}

func (f *flowTotals) merge(o *flowTotals) {
	f.messages += o.messages
	f.bytes += o.bytes
	for i := range f.sizes {
		f.sizes[i] += o.sizes[i]
	}
}
