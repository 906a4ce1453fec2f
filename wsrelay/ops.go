package wsrelay

import (
	"cmp"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Info returns what the session is doing now. The counters are read
// while the session runs: each is current, the whole is not one instant.
func (s *Session) Info() Info {
	in := Info{
		ID: s.ID(), Route: s.route.Name, Upstream: s.route.Upstream, Target: s.target,
		Client: s.remote, Subprotocol: s.subprotocol, Started: time.Unix(0, s.start),
		LastActive: time.Unix(0, s.lastActive()),
		Closing:    s.closing(),
		Injected:   s.injected.Load(),
		FromBackend: Flow{
			Messages: s.backend.messages.Load(),
			Bytes:    s.backend.bytes.Load(),
		},
	}
	if in.LastActive.UnixNano() == 0 {
		in.LastActive = in.Started
	}
	if c := s.clientLeg(); c != nil {
		in.FromClient = Flow{Messages: c.messages.Load(), Bytes: c.bytes.Load()}
	}
	return in
}

// matches reports whether the session is selected by f.
func (f *Filter) matches(s *Session) bool {
	if f.Route != "" && f.Route != s.route.Name ||
		f.Upstream != "" && f.Upstream != s.route.Upstream ||
		f.Target != "" && f.Target != s.target {
		return false
	}
	if f.Client != "" && f.Client != s.remote {
		host, _, err := net.SplitHostPort(s.remote)
		if err != nil || host != f.Client {
			return false
		}
	}
	return true
}

// Sessions returns the live sessions f selects, in the order they
// started.
func (r *Registry) Sessions(f Filter) []Info {
	r.mu.Lock()
	list := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		if f.matches(s) {
			list = append(list, s)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(list, func(a, b *Session) int { return cmp.Compare(a.id, b.id) })
	out := make([]Info, len(list))
	for i, s := range list {
		out[i] = s.Info()
	}
	return out
}

// Newest returns the n sessions that started last, the newest first, and
// how many are live: what a dashboard shows, without an Info for every
// session.
func (r *Registry) Newest(n int) ([]Info, int) {
	r.mu.Lock()
	list := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	r.mu.Unlock()
	slices.SortFunc(list, func(a, b *Session) int { return cmp.Compare(b.id, a.id) })
	out := make([]Info, min(n, len(list)))
	for i := range out {
		out[i] = list[i].Info()
	}
	return out, len(list)
}

// lookup returns the live session with the given id.
func (r *Registry) lookup(id string) *Session {
	n, err := strconv.ParseUint(id, 36, 64)
	if err != nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[n]
}

// Get returns the live session with the given id.
func (r *Registry) Get(id string) (Info, bool) {
	s := r.lookup(id)
	if s == nil {
		return Info{}, false
	}
	return s.Info(), true
}

// Close closes the session with the given id: its client gets code and
// reason, its backend 1001. ErrNotFound if there is none, ErrClosing if
// it is closing already.
func (r *Registry) Close(id string, code uint16, reason string) error {
	s := r.lookup(id)
	if s == nil {
		return ErrNotFound
	}
	if s.closing() {
		return ErrClosing
	}
	s.Decide() // a reload leaves it to this close
	s.CloseClient(code, reason)
	return nil
}

// MaxSend is the largest message Send and Broadcast inject.
const MaxSend = 16 << 20

// Send sends one message (text unless binary) to the client of the
// session with the given id, between two messages of the backend's, never
// inside a fragmented one. ErrNotFound, ErrClosing, ErrTooBig (over
// MaxSend, or the text is not UTF-8), ErrBusy.
func (r *Registry) Send(id string, binary bool, msg []byte) error {
	s := r.lookup(id)
	if s == nil {
		return ErrNotFound
	}
	return s.Send(binary, msg)
}

// broadcastWait bounds how long Broadcast waits for one session to reach
// a message boundary: a session busy longer than that is skipped (not
// counted), so that a broadcast over many busy sessions ends in moments,
// not in a write timeout per 16 sessions.
const broadcastWait = time.Second

// Broadcast sends one message to the client of every live session of the
// route named route and returns how many were sent. A session whose
// backend is in the middle of a fragmented message (or a large frame) for
// longer than a second is skipped.
func (r *Registry) Broadcast(route string, binary bool, msg []byte) int {
	r.mu.Lock()
	var list []*Session
	for _, s := range r.sessions {
		if s.route.Name == route {
			list = append(list, s)
		}
	}
	r.mu.Unlock()
	// A few sessions at a time: one slow client must not hold up the
	// rest, nor may ten thousand writes start at once.
	var sent atomic.Int64
	var wg sync.WaitGroup
	next := make(chan *Session)
	for range min(len(list), 16) {
		wg.Go(func() {
			for s := range next {
				if s.send(binary, msg, broadcastWait) == nil {
					sent.Add(1)
				}
			}
		})
	}
	for _, s := range list {
		next <- s
	}
	close(next)
	wg.Wait()
	return int(sent.Load())
}

// Send sends one message to the session's client (see Registry.Send). It
// waits, up to the session's write timeout, while the session has not
// started yet (the 101 is on its way), while a frame to the client is
// being written (a large one holds the leg for as long as it streams), or
// while the backend is in the middle of a fragmented message.
func (s *Session) Send(binary bool, msg []byte) error {
	timeout := s.write
	if timeout <= 0 {
		timeout = closeWait
	}
	return s.send(binary, msg, timeout)
}

// send is Send waiting at most wait for a message boundary.
func (s *Session) send(binary bool, msg []byte, wait time.Duration) error {
	if len(msg) > MaxSend || !binary && !utf8.Valid(msg) {
		return ErrTooBig
	}
	opcode := byte(opText)
	if binary {
		opcode = opBinary
	}
	timeout := s.write
	if timeout <= 0 {
		timeout = closeWait
	}
	deadline := time.Now().Add(wait)
	for pause := 100 * time.Microsecond; ; pause = min(2*pause, 10*time.Millisecond) {
		if s.closing() {
			return ErrClosing
		}
		if l := s.clientLeg(); l != nil && l.mu.TryLock() {
			if l.closeSent {
				l.mu.Unlock()
				return ErrClosing
			}
			if !l.midMessage {
				h := frameHeader{fin: true, opcode: opcode, length: int64(len(msg))}
				l.wbuf = appendHeader(l.wbuf[:0], &h)
				l.writeWithinLocked(timeout)
				_, err := l.write(l.wbuf)
				if err == nil {
					_, err = l.write(msg)
				}
				if err != nil {
					l.failLocked(err)
				}
				l.mu.Unlock()
				if err != nil {
					return ErrClosing
				}
				s.injected.Add(1)
				return nil
			}
			l.mu.Unlock()
		}
		if time.Now().After(deadline) {
			return ErrBusy
		}
		// The backend's message is being relayed, or the session is
		// starting: either takes moments (or the write timeout ends the
		// session).
		time.Sleep(pause)
	}
}
