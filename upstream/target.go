package upstream

import "sync/atomic"

// Target is one backend server of a [Set].
type Target struct {
	// URL is scheme://host:port: the target's identity in logs.
	URL string
	// Scheme is "http" or "https".
	Scheme string
	// Addr is the host:port to dial.
	Addr string

	set *Set
	ext atomic.Pointer[any] // what the caller attached (see Attached)
}

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
