package wsrelay

import (
	"cmp"
	"crypto/rand"
	"math"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsgate/wsgate/internal/netpoll"
	"github.com/wsgate/wsgate/ratelimit"
)

// Policy is what wsgate enforces on a session beyond RFC 6455: its own
// keepalive pings, the kernel's bound on unacknowledged data, a message
// rate and a UTF-8 check of text. The sessions of one route share one
// Policy; it must not change once a session uses it.
type Policy struct {
	// PingInterval: a leg whose peer sent no frame for this long gets a
	// ping from wsgate; 0: no pings. PingTimeout: a leg that then sends
	// nothing for this long is dead and the session ends.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// UserTimeout is set as TCP_USER_TIMEOUT on both legs: data left
	// unacknowledged for this long cuts the connection. 0: the kernel's
	// default (about 15 minutes of retransmissions).
	UserTimeout time.Duration
	// MessageRate limits the data messages of each session in each
	// direction; over it, the sender gets 1008 (or, with DropOverRate,
	// its whole message is dropped).
	MessageRate  ratelimit.Limit
	DropOverRate bool
	// ValidateUTF8: text messages (not compressed) are checked as UTF-8;
	// invalid text gets 1007.
	ValidateUTF8 bool
	// ExpiryCode and ExpiryReason are what the client of a session whose
	// credentials expired gets (Config.Expires); 0: 4001 "token
	// expired".
	ExpiryCode   uint16
	ExpiryReason string
}

// noPolicy is the Policy of sessions made without one.
var noPolicy = &Policy{}

// policy returns the session's Policy.
func (s *Session) policy() *Policy { return s.pol.Load() }

// SetPolicy makes p the session's Policy from now on: a reload that
// leaves the session running applies its route's new keepalive, rate and
// UTF-8 settings to it (TCP_USER_TIMEOUT stays as set at the start). The
// rate limit's state carries over.
func (s *Session) SetPolicy(p *Policy) { s.pol.Store(cmp.Or(p, noPolicy)) }

// Keepalive pings carry pingToken, random per process, so that the pong
// answering one is told apart from the peers' own pongs (which pass).
var pingToken = func() (t [8]byte) {
	_, _ = rand.Read(t[:])
	return t
}()

// Close codes and reasons of the policies.
const (
	closePolicyViolation = 1008
	closeRateReason      = "message rate exceeded"
)

// Actions counts what wsgate's policies did to one side of a route's
// sessions.
type Actions struct {
	// Pings wsgate sent to this side; PingTimeouts: sessions ended
	// because this side did not answer one.
	Pings        int64
	PingTimeouts int64
	// RateLimited: sessions closed (1008) because this side sent over
	// the message rate; Dropped: its messages dropped over the rate.
	RateLimited int64
	Dropped     int64
	// InvalidUTF8: sessions closed (1007) because this side sent text
	// that is not UTF-8.
	InvalidUTF8 int64
	// Expired: sessions closed because their credentials expired
	// (counted on the client side).
	Expired int64
}

// actionCounts is Actions, live: per route and side, updated by the
// sessions as they act.
type actionCounts struct {
	pings, pingTimeouts, rateLimited, dropped, invalidUTF8, expired atomic.Int64
}

func (a *actionCounts) snapshot() Actions {
	return Actions{
		Pings: a.pings.Load(), PingTimeouts: a.pingTimeouts.Load(),
		RateLimited: a.rateLimited.Load(), Dropped: a.dropped.Load(), InvalidUTF8: a.invalidUTF8.Load(),
		Expired: a.expired.Load(),
	}
}

// actions returns the counts of what was done to l's side.
func (s *Session) actions(l *leg) *actionCounts {
	if l.masked {
		return &s.route.backendActions
	}
	return &s.route.clientActions
}

// setUserTimeout sets TCP_USER_TIMEOUT on c (under TLS, on its TCP
// connection) when the policy asks for one.
func (p *Policy) setUserTimeout(c net.Conn) {
	if p.UserTimeout <= 0 {
		return
	}
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn() // *tls.Conn
	}
	if tc, ok := netpoll.TCPConn(c); ok {
		_ = netpoll.SetUserTimeout(tc, p.UserTimeout)
	}
}

// lastActive is when the last frame came from either peer (unix
// nanoseconds).
func (s *Session) lastActive() int64 {
	t := s.backend.lastRead.Load()
	if c := s.clientLeg(); c != nil {
		t = max(t, c.lastRead.Load())
	}
	return t
}

// lastActiveRun is lastActive for the pumps and the poller, which run
// only once s.client is set.
func (s *Session) lastActiveRun() int64 {
	return max(s.backend.lastRead.Load(), s.client.lastRead.Load())
}

// pingDue is when wsgate acts next on l for keepalive (unix nanoseconds):
// it pings l at its last frame plus the interval; with a ping out, l is
// dead at the ping plus the timeout. dead says which; 0 when pings are
// off.
func (s *Session) pingDue(l *leg) (at int64, dead bool) {
	p := s.policy()
	if p.PingInterval <= 0 {
		return 0, false
	}
	seen, sent := l.lastRead.Load(), l.pingAt.Load()
	if sent > seen {
		return addSat(sent, s.pingTimeout()), true
	}
	return addSat(seen, p.PingInterval), false
}

// pingNear reports whether l has a ping out whose timeout is within
// parkMargin of now: l's pump then waits on its goroutine, with an exact
// deadline, rather than in the poller.
func (s *Session) pingNear(l *leg, now int64) bool {
	at, dead := s.pingDue(l)
	return dead && at-now <= int64(parkMargin)
}

// pingFrame returns wsgate's keepalive ping as l must receive it.
func pingFrame(buf []byte, l *leg) []byte {
	return appendControlFrame(buf, opPing, pingToken[:], l.masked, newMaskKey())
}

// ping sends wsgate's keepalive ping to l from a pump goroutine. It does
// not wait for a write to l in progress (the other direction may hold
// l's lock for a whole slow frame, and this pump must go on reading):
// then nothing is sent, and setReadDeadline retries within pingRetry.
func (s *Session) ping(l *leg) {
	if !l.mu.TryLock() {
		return
	}
	defer l.mu.Unlock()
	if l.closeSent {
		return
	}
	buf := controlPool.Get().(*controlBuf)
	defer controlPool.Put(buf)
	b := pingFrame(buf[:0], l)
	l.writeWithinLocked(min(s.pingTimeout(), closeWait))
	if _, err := l.write(b); err != nil {
		l.failLocked(err)
		return
	}
	// Stamped once it is out: the answer's time counts from here.
	l.pingAt.Store(time.Now().UnixNano())
	s.actions(l).pings.Add(1)
}

// pingRetry is how soon a pump tries again a ping it could not send.
const pingRetry = 50 * time.Millisecond

// recheckEvery bounds the read deadline of a leg that never parks, so
// that a policy a reload sets (SetPolicy) reaches it this soon: 30 s
// (tests shorten it).
var recheckEvery = func() *atomic.Int64 {
	var d atomic.Int64
	d.Store(int64(30 * time.Second))
	return &d
}()

// pingTimeout is the policy's ping timeout; a policy made without one
// (not through the config) gets the config's default.
func (s *Session) pingTimeout() time.Duration {
	if t := s.policy().PingTimeout; t > 0 {
		return t
	}
	return 10 * time.Second
}

// allowMessage takes a token for a new message from src's rate limit. A
// reload that changes the policy starts src's bucket afresh (full): a
// state built under the old limit does not carry over.
func (s *Session) allowMessage(src *leg, p *Policy, now int64) bool {
	if !p.MessageRate.Enabled() {
		return true
	}
	if src.tatPol != p {
		src.tat, src.tatPol = 0, p
	}
	return p.MessageRate.Allow(&src.tat, now)
}

// addSat is a + d, saturating: durations from a policy may be huge.
func addSat(a int64, d time.Duration) int64 {
	if int64(d) > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + int64(d)
}

// pingNow sends wsgate's keepalive ping to the parked leg l from the
// poller, without waiting: it does nothing if a write to l is in
// progress or l's socket is full (the next sweep tries again).
func (s *Session) pingNow(l *leg, now int64) {
	if !l.mu.TryLock() {
		return
	}
	if l.closeSent {
		l.mu.Unlock()
		return
	}
	buf := controlPool.Get().(*controlBuf)
	defer controlPool.Put(buf)
	b := pingFrame(buf[:0], l)
	n, err := l.writeNow(b)
	switch {
	case n == len(b):
	case n == 0 && (err == nil || err == syscall.EAGAIN):
		l.mu.Unlock()
		return
	case n > 0 && (err == nil || err == syscall.EAGAIN):
		// Part of the frame is out: the rest must follow before
		// anything else, on a goroutine that may wait.
		rest := append([]byte(nil), b[n:]...)
		go func() {
			defer l.mu.Unlock()
			l.writeWithinLocked(closeWait)
			if _, err := l.write(rest); err != nil {
				l.failLocked(err)
			}
		}()
		l.pingAt.Store(now)
		s.actions(l).pings.Add(1)
		return
	default:
		l.failLocked(err)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.pingAt.Store(now)
	s.actions(l).pings.Add(1)
}

// ownPong reports whether b, read from src, starts with a whole valid
// pong answering wsgate's ping, and its size on the wire.
func (s *Session) ownPong(src *leg, b []byte) (int, bool) {
	h, ok, err := parseHeader(b)
	if !ok || err != nil || h.opcode != opPong || h.length != int64(len(pingToken)) ||
		len(b) < h.size+len(pingToken) || s.check(&h, &src.st) != nil {
		return 0, false
	}
	return h.size + len(pingToken), isPingToken(b[h.size:h.size+len(pingToken)], &h)
}

// isPingToken reports whether payload p of the frame h (masked or not)
// is pingToken.
func isPingToken(p []byte, h *frameHeader) bool {
	if len(p) != len(pingToken) {
		return false
	}
	for i := range p {
		c := p[i]
		if h.masked {
			c ^= h.mask[i&3]
		}
		if c != pingToken[i] {
			return false
		}
	}
	return true
}

// pingTimedOut ends the session because dead did not answer a ping:
// dead's connection is cut (there is no one to send a close to), and
// the live side gets 1001 (the client went) or 1011 "upstream
// unresponsive" (the backend went).
func (s *Session) pingTimedOut(dead, live *leg) {
	code, reason, logReason := uint16(closeGoingAway), "client ping timeout", "client ping timeout"
	if dead.masked {
		code, reason, logReason = closeInternalError, "upstream unresponsive", "backend ping timeout"
	}
	s.firstClose(closedByWsgate, code, logReason)
	s.actions(dead).pingTimeouts.Add(1)
	s.reg.log.Info("websocket ping timeout", "session", s.ID(), "route", s.route.Name, "side", dead.side(),
		"timeout_ms", s.policy().PingTimeout.Milliseconds())
	dead.dead.Store(true)
	_ = dead.conn.Close() // a write blocked on dead fails and lets go of its lock
	s.startClosing()      // first: no ping is due while the close is written
	live.sendClose(code, reason)
}

// expiresNear reports whether src is the client leg of a session whose
// credentials expire within parkMargin of now: its pump then waits on
// its goroutine with an exact deadline rather than in the poller.
func (s *Session) expiresNear(src *leg, now int64) bool {
	return src == s.client && s.expires != 0 && s.expires-now <= int64(parkMargin)
}

// expire closes a session whose credentials expired: the policy's code
// (default 4001 "token expired") to the client, 1001 to the backend.
func (s *Session) expire() {
	p := s.policy()
	code, reason := p.ExpiryCode, p.ExpiryReason
	if code == 0 {
		code, reason = 4001, "token expired"
	}
	if s.closeBy.Load() == 0 {
		s.route.clientActions.expired.Add(1)
	}
	s.closeBoth(code, reason, closeGoingAway, "token expired")
}
