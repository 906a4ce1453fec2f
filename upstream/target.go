package upstream

import (
	"sync"
	"sync/atomic"
)

// Target is one backend server of a [Set]. A request or WebSocket
// session that got it from [Attempt.Next] holds it until it ends: see
// [Target.Release], [Target.SessionOpened] and [Target.SessionClosed].
type Target struct {
	// URL is scheme://host:port with the address dialled: the target's
	// identity in logs, hashing and cookies.
	URL string
	// Scheme is "http" or "https".
	Scheme string
	// Addr is the host:port to dial.
	Addr string
	// Host is the host as written in the config: the name behind a
	// discovered address, the TLS server name and the Host of checks.
	Host string
	// Weight is the target's share relative to the others.
	Weight int

	set    *Set
	st     *state
	hrw    uint64 // fnv1a(URL), for rendezvous hashing
	cookie string // the sticky cookie's value naming this target
	// Set-Cookie values for this target, without and with Secure.
	setCookie, setCookieSecure string

	ext atomic.Pointer[any] // what the caller attached (see Attached)
}

// state is what wsgate knows of a backend address. It is shared by every
// Target with the same URL, across the sets of successive configs, so
// counts and health outlive a reload.
type state struct {
	url string
	// active counts requests in flight, WebSocket handshakes and open
	// sessions: the load least_conn and max_connections see.
	active atomic.Int64
	// sessions counts open WebSocket sessions.
	sessions atomic.Int64
	// down holds downUnhealthy and downEjected; 0 means in rotation.
	down atomic.Uint32
	// unchecked is set while a target that started unhealthy
	// (Health.StartUnhealthy) waits for its first passing check, which
	// alone brings it in.
	unchecked atomic.Bool
	// failing is the kind of failure last logged (failRefused, …); 0
	// while the target answers. It rate-limits the failure log lines to
	// one per change.
	failing atomic.Uint32

	// Passive ejection (passive.go).
	winStart atomic.Int64 // unix ns: start of the failure window
	winFails atomic.Int32 // failures counted in the window
	// ejectMu orders ejections and readmissions, which the sets of two
	// configs sharing the state may attempt at once; the fields are
	// atomics so that they can be read without it.
	ejectMu      sync.Mutex
	ejectedUntil atomic.Int64 // unix ns; written under ejectMu
	ejections    atomic.Int32 // ejections in a row; written under ejectMu
	ejectedTotal atomic.Int64 // ejections ever, for metrics; written under ejectMu
	lastEjectEnd atomic.Int64 // unix ns; written under ejectMu
}

// downGen counts changes of any state's down bits, in every set: a set
// whose table was built at an older generation rebuilds it (see
// Set.Begin), so that a target the set of another config brought back
// (during a reload, both share the state) returns to rotation here too.
// Read on every request, written only on a health change.
var downGen atomic.Uint64

// setDown sets bits in the down bits; it reports whether they were all
// clear before (this call took the target out for that reason).
func (st *state) setDown(bits uint32) bool {
	for {
		old := st.down.Load()
		if old&bits == bits {
			return false
		}
		if st.down.CompareAndSwap(old, old|bits) {
			downGen.Add(1)
			return old&bits == 0
		}
	}
}

// clearDown clears bits in the down bits; it reports whether any of them
// was set.
func (st *state) clearDown(bits uint32) bool {
	for {
		old := st.down.Load()
		if old&bits == 0 {
			return false
		}
		if st.down.CompareAndSwap(old, old&^bits) {
			downGen.Add(1)
			return true
		}
	}
}

// Reasons a target is out of rotation (state.down bits).
const (
	downUnhealthy uint32 = 1 << iota // active checks failed
	downEjected                      // passive ejection
)

// TLS reports whether the target is reached over TLS.
func (t *Target) TLS() bool { return t.Scheme == "https" }

// Set returns the set the target belongs to.
func (t *Target) Set() *Set { return t.set }

// Attached returns the value the caller keeps with the target, such as
// its HTTP client, creating it with mk on first use. Concurrent first
// uses may each call mk; one result wins and is returned to all.
func (t *Target) Attached(mk func(*Target) any) any {
	if p := t.ext.Load(); p != nil {
		return *p
	}
	v := mk(t)
	if t.ext.CompareAndSwap(nil, &v) {
		return v
	}
	return *t.ext.Load()
}

// Release ends what [Attempt.Next] started: an HTTP request that got a
// response (after its body is relayed), or a handshake that did not
// become a session. Call it exactly once, unless Failed was called.
func (t *Target) Release() { t.st.active.Add(-1) }

// SessionOpened turns the handshake that got t into an open WebSocket
// session; [Target.SessionClosed] ends it.
func (t *Target) SessionOpened() { t.st.sessions.Add(1) }

// SessionClosed ends a session started with SessionOpened. Call it
// exactly once per session, however the session ends.
func (t *Target) SessionClosed() {
	t.st.sessions.Add(-1)
	t.st.active.Add(-1)
}

// Sessions returns the number of open WebSocket sessions on the target.
func (t *Target) Sessions() int64 { return t.st.sessions.Load() }

// Active returns the number of open WebSocket sessions, handshakes and
// HTTP requests in flight on the target.
func (t *Target) Active() int64 { return t.st.active.Load() }

// Healthy reports whether the target is in rotation (neither failed its
// active checks nor ejected).
func (t *Target) Healthy() bool { return t.st.down.Load() == 0 }

// StickyCookie returns the Set-Cookie value that pins a client to t
// under the Cookie policy; "" for other policies.
func (t *Target) StickyCookie(secure bool) string {
	if secure {
		return t.setCookieSecure
	}
	return t.setCookie
}
