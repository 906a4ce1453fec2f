package wsrelay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// closeWait bounds each close handshake: after wsgate sends a close frame
// (or one side ends), the peer has this long to answer before the TCP
// connections are cut (Options.CloseWait, which tests may raise). It also
// bounds each write of a control frame.
const closeWait = 5 * time.Second

// chunkSize is the copy buffer for frames larger than a leg's read buffer.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// leg is one side of a session: the client or the backend connection.
// Its fields are ordered so that it fits the 288-byte size class (small
// fields last, together): every idle session holds two.
type leg struct {
	conn net.Conn
	// br and raw are used only by the pump whose source is this leg. br
	// holds no buffer while the leg waits for data (see frameReader); raw,
	// set for plain TCP, lets an idle leg park in the poller.
	raw    syscall.RawConn
	br     *frameReader
	pl     *poller // the session's poller, nil if legs cannot park
	parkID uint64  // guarded by the poller's mutex

	// State of one write or writeNow call on a plain TCP leg.
	rw netpoll.Writer

	mu      sync.Mutex // guards writes to conn, closeSent, wbuf, writeBy and midMessage
	wbuf    []byte     // scratch for headers and control frames
	writeBy int64      // unix nanoseconds: the write deadline last set

	// readBy (unix nanoseconds) is the read deadline last set by the pump
	// reading this leg; used only by that pump.
	readBy int64

	// What this leg's peer sent, counted as frames pass: written only
	// by the pump (or poller) reading this leg, read live by the admin
	// API and the metrics (see Session.Info). Messages count at their
	// first frame, sizes at their last.
	messages atomic.Int64
	bytes    atomic.Int64
	st       pumpState // the message in progress on this leg
	sizes    sizeCounts

	// lastRead is when the last frame came from this leg's peer (unix
	// nanoseconds), written by whoever reads the leg; pingAt is when
	// wsgate last sent it a keepalive ping: the ping is out while pingAt
	// is later than lastRead.
	lastRead atomic.Int64
	pingAt   atomic.Int64
	// tat is the rate limit's state for the peer's messages (see
	// ratelimit.Limit.Allow), tatPol the policy it was built under (see
	// allowMessage); used by whoever reads the leg.
	tat    int64
	tatPol *Policy

	// pending: this many buffered bytes of br are frames prepared for
	// the other leg, whose mu is locked until the pump writes them (see
	// serve). Used by whoever reads this leg.
	pending int32
	// dead: breakLocked closed conn (set before it unparks the leg).
	dead atomic.Bool
	// closeCode is the close code this leg sent, 0 if none: set by the
	// pump reading this leg, read after both pumps end.
	closeCode uint16
	// park: the pump found the leg idle for parkAfter and should park it.
	park bool
	// streamed: this leg carried a frame larger than what one read
	// holds, so its pump keeps its goroutine until the leg has been idle
	// for parkAfter (see relayFrame). Used by whoever reads this leg.
	streamed bool
	// masked: frames written to this leg are masked (wsgate is the client
	// of the backend); frames read from the other leg then arrive masked.
	masked bool
	// closeSent: a close frame is out (or reserved, see reserveClose),
	// or the leg is dead; nothing more may be written to conn. Guarded
	// by mu.
	closeSent bool
	// midMessage: the last data frame written to this leg did not end
	// its message, so nothing else (an injected message) may be written
	// before the rest. Guarded by mu.
	midMessage bool
	// writeTimedOut: a write to this leg timed out and wsgate cut it
	// (see failLocked). Guarded by mu.
	writeTimedOut bool
}

// closer is who closed first when this leg's peer ended the session.
func (l *leg) closer() closedBy {
	if l.masked {
		return closedByBackend
	}
	return closedByClient
}

// closedBy says who closed a session first.
type closedBy uint8

const (
	closedByNone closedBy = iota
	closedByClient
	closedByBackend
	closedByWsgate
)

func (c closedBy) String() string {
	switch c {
	case closedByClient:
		return "client"
	case closedByBackend:
		return "backend"
	case closedByWsgate:
		return "wsgate"
	}
	return ""
}

// firstClose records who closed first, with the code and reason, unless
// someone did already.
func (s *Session) firstClose(by closedBy, code uint16, reason string) {
	s.endMu.Lock()
	if s.closedBy == closedByNone {
		s.closedBy, s.firstCode, s.firstReason = by, code, reason
	}
	s.endMu.Unlock()
}

// clientLeg returns the client leg, nil before Run.
func (s *Session) clientLeg() *leg {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	return s.client
}

// side names the leg in logs: "client" or "backend" (the masked one).
func (l *leg) side() string {
	if l.masked {
		return "backend"
	}
	return "client"
}

// Session is one proxied WebSocket: two legs and two pumps. Make one
// with [Registry.NewSession].
type Session struct {
	reg         *Registry
	id          uint64
	route       *Route
	client      *leg
	backend     *leg
	remote      string // client address, for logs
	target      string // the backend's URL
	subprotocol string
	onEnd       func() // called once when the session is removed
	tag         any    // the caller's (see Config.Tag)
	start       int64  // unix nanoseconds
	// expires is when the session's credentials run out (unix
	// nanoseconds, 0: never): the client then gets the policy's
	// ExpiryCode (see expire).
	expires int64
	pl      *poller // where this session's legs park

	deflate    bool // permessage-deflate negotiated: RSV1 allowed on data frames
	maxMessage int64
	idle       time.Duration
	write      time.Duration
	pol        atomic.Pointer[Policy] // never nil (see policy)
	injected   atomic.Int64           // messages Send wrote to the client
	// closeBy is 0 while the session is open; once the closing handshake
	// starts it holds the unix nanoseconds by which both legs must be
	// done, and every read deadline is set to it.
	closeBy atomic.Int64
	// connsClosed is set once closeConns runs (before it unparks legs).
	connsClosed atomic.Bool
	// removed is set by the one Registry.remove call that counts.
	removed atomic.Bool
	endMu   sync.Mutex
	started bool // guarded by endMu: client is set and the pumps run
	// awayCode and awayReason: a close asked for before the start (Drain's
	// 1001, a reload's code), which run sends; guarded by endMu.
	awayCode   uint16
	awayReason string
	// scheduled is set once a reload or a drain has decided to close the
	// session, so that a later reload does not decide again.
	scheduled atomic.Bool
	// closedBy is who closed first, with the code and reason (see
	// firstClose); guarded by endMu.
	closedBy    closedBy
	firstCode   uint16
	firstReason string
	pumpsRun    int         // guarded by endMu
	force       *time.Timer // guarded by endMu
	ended       bool        // guarded by endMu: conns are closed
}

// keepAlive turns on TCP keep-alive probes toward a WebSocket client.
// wsgate's listeners accept without them (an HTTP connection is bounded
// by the idle timeout), but a session may stay quiet for as long as its
// idle_timeout, and a client that vanished without a FIN (a dropped NAT
// mapping, a phone gone off the network) is then found in about 2.5
// minutes, as Go's default listeners would. Backend legs are dialled
// with Go's default keep-alive.
func keepAlive(c net.Conn) {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn() // *tls.Conn
	}
	if tc, ok := netpoll.TCPConn(c); ok {
		_ = tc.SetKeepAliveConfig(clientKeepAlive)
	}
}

var clientKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}

// Run starts relaying frames both ways on client (the connection the
// client handshake was done on) and the backend connection; the session ends (connections
// closed, log written, registry entry removed) when the last pump ends.
// A direction that can wait in the poller starts parked; the other runs
// on a goroutine, one of them the caller's. early holds client bytes read
// before the connection was handed over.
func (s *Session) Run(client net.Conn, early []byte) {
	now := time.Now().UnixNano()
	s.backend.lastRead.Store(now)
	s.pl = pickPoller()
	s.backend.pl = s.pl
	keepAlive(client)
	s.policy().setUserTimeout(client)
	s.policy().setUserTimeout(s.backend.conn)
	cl := newLeg(client, early, false)
	cl.lastRead.Store(now)
	cl.pl = s.pl
	s.endMu.Lock()
	s.client = cl
	s.started = true
	s.pumpsRun = 2
	awayCode, awayReason, ended := s.awayCode, s.awayReason, s.ended
	s.endMu.Unlock()
	if ended {
		// Drain cut the session before fasthttp handed over the client
		// connection; closeConns could not close it then.
		_ = client.Close()
		s.log()
		s.reg.remove(s)
		return
	}
	if awayCode != 0 {
		s.CloseClient(awayCode, awayReason)
	}
	// A leg that can wait in the poller starts there: a new session costs
	// no goroutine until a peer sends something (the poller resumes at
	// once if data is already waiting).
	if !s.canPark(s.backend) || !s.park(s.backend, s.client) {
		go s.pumpLoop(s.backend, s.client)
	}
	if !s.canPark(s.client) || !s.park(s.client, s.backend) {
		s.pumpLoop(s.client, s.backend)
	}
}

// pumpLoop runs one direction's pump until it ends or parks. A parked
// pump continues in a new goroutine when its source has data (see park);
// the last pump to end finishes the session.
func (s *Session) pumpLoop(src, dst *leg) {
	defer func() {
		// A bug must cost this session, not the process: there is no
		// fasthttp recover on these goroutines.
		if v := recover(); v != nil {
			s.reg.log.Error("panic in websocket relay", "session", s.ID(), "route", s.route.Name, "side", src.side(),
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			s.closeConns()
			s.pumpReturned()
		}
	}()
	if src.pending > 0 {
		s.finishPending(src, dst)
	}
	for {
		if !s.relayFrame(src, dst, &src.st) {
			s.pumpReturned()
			return
		}
		if src.park {
			src.park = false
			src.streamed = false // idle, or small frames only: the poller may have it
			if s.park(src, dst) {
				return
			}
		}
	}
}

// finishPending writes the frames the poller prepared for dst but could
// not write without waiting (see serve); dst.mu is locked for it.
func (s *Session) finishPending(src, dst *leg) {
	defer dst.mu.Unlock()
	n := int(src.pending)
	src.pending = 0
	b, err := src.br.Peek(n) // buffered: Peek does not read
	if err != nil {
		dst.breakLocked()
		return
	}
	if s.write > 0 {
		dst.writeWithinLocked(s.write)
	}
	if _, err := dst.write(b); err != nil {
		dst.failLocked(err)
	}
	_, _ = src.br.Discard(n)
}

// closing reports whether the session's closing handshake has started
// or its connections are closed.
func (s *Session) closing() bool {
	return s.closeBy.Load() != 0 || s.connsClosed.Load()
}

// pumpReturned starts the close-handshake budget for the other pump when
// the first one ends: it gets h.closeWait, then both connections are cut.
func (s *Session) pumpReturned() {
	s.endMu.Lock()
	s.pumpsRun--
	switch s.pumpsRun {
	case 1:
		s.force = time.AfterFunc(s.reg.closeWait, s.closeConns)
		s.endMu.Unlock()
	case 0:
		if s.force != nil {
			s.force.Stop()
		}
		s.endMu.Unlock()
		s.closeConns()
		s.log()
		s.reg.remove(s)
	default:
		s.endMu.Unlock()
	}
}

// closeConns cuts both TCP connections, which ends any blocked pump.
// Safe to call more than once and from any goroutine.
func (s *Session) closeConns() {
	s.endMu.Lock()
	if s.ended {
		s.endMu.Unlock()
		return
	}
	s.ended = true
	client := s.client
	s.endMu.Unlock()
	s.connsClosed.Store(true)
	if client != nil {
		_ = client.conn.Close()
	}
	_ = s.backend.conn.Close()
	s.unpark() // parked pumps resume, fail on the closed conns and end
}

// closeBoth sends close frames to both legs (each only once) and bounds
// the remaining reads by h.closeWait. Both closes are reserved before either
// is written: otherwise the first peer could echo its close before the
// second one is out, and its pump would relay that echo to the other peer
// in place of the code chosen here.
func (s *Session) closeBoth(clientCode uint16, clientReason string, backendCode uint16, backendReason string) {
	s.firstClose(closedByWsgate, clientCode, clientReason)
	s.startClosing()
	toClient := s.client.reserveClose()
	toBackend := s.backend.reserveClose()
	if toClient {
		s.client.writeClose(clientCode, clientReason)
	}
	if toBackend {
		s.backend.writeClose(backendCode, backendReason)
	}
}

// closeBothSoon is closeBoth for a caller that closes many sessions in a
// row (a reload's schedule, the drain): it does not wait, and reports
// false, having sent nothing, when a write to either leg is in progress;
// the caller then runs closeBoth on a goroutine. The two closes are
// reserved together, as closeBoth does.
func (s *Session) closeBothSoon(clientCode uint16, clientReason string, backendCode uint16, backendReason string) bool {
	c, b := s.client, s.backend
	if !c.mu.TryLock() {
		return false
	}
	if !b.mu.TryLock() {
		c.mu.Unlock()
		return false
	}
	toClient, toBackend := !c.closeSent, !b.closeSent
	c.closeSent, b.closeSent = true, true
	b.mu.Unlock()
	c.mu.Unlock()
	s.firstClose(closedByWsgate, clientCode, clientReason)
	s.startClosing()
	if toClient {
		c.writeCloseSoon(clientCode, clientReason)
	}
	if toBackend {
		b.writeCloseSoon(backendCode, backendReason)
	}
	return true
}

// CloseClientSoon is CloseClient without waiting (see closeBothSoon): it
// reports false, having done nothing, when the caller must call
// CloseClient on a goroutine instead.
func (s *Session) CloseClientSoon(code uint16, reason string) bool {
	s.endMu.Lock()
	started := s.started
	s.endMu.Unlock()
	if !started {
		s.CloseClient(code, reason) // recorded for run: no wait
		return true
	}
	return s.closeBothSoon(code, reason, closeGoingAway, "going away")
}

// startClosing starts the closing handshake: from now on every read is
// bounded by closeBy. Safe to call more than once.
func (s *Session) startClosing() {
	by := time.Now().Add(s.reg.closeWait).UnixNano()
	if s.closeBy.CompareAndSwap(0, by) {
		// Wake pumps blocked on a long idle deadline.
		_ = s.client.conn.SetReadDeadline(time.Unix(0, by))
		_ = s.backend.conn.SetReadDeadline(time.Unix(0, by))
	}
}

// goAway sends 1001 "going away" to both legs; used by Drain.
func (s *Session) goAway() { s.CloseClient(closeGoingAway, "going away") }

// CloseClient sends code and reason to the client and 1001 "going away"
// to the backend: a session wsgate itself ends (shutdown, reload). Before
// the session starts, run sends it; the first such close wins.
func (s *Session) CloseClient(code uint16, reason string) {
	s.endMu.Lock()
	if !s.started {
		if s.awayCode == 0 {
			s.awayCode, s.awayReason = code, reason
		}
		s.endMu.Unlock()
		return
	}
	s.endMu.Unlock()
	s.closeBoth(code, reason, closeGoingAway, "going away")
}

// pumpState is what a pump knows about the message in progress on its
// source.
type pumpState struct {
	fromClient bool
	inMessage  bool // a fragmented data message is in progress
	// text: the message is text to check as UTF-8 (see utf8Masked),
	// utf8 the check's state after its bytes so far.
	text bool
	utf8 uint8
	// dropping: the message is over the rate and is being dropped.
	dropping bool
	// badText: forward found invalid UTF-8 in a streamed frame.
	badText bool
	msgSize int64 // payload bytes of the current message so far
}

// relayFrame reads one frame from src and deals with it: data frames are
// forwarded, pings and pongs relayed, a close ends the direction. It
// reports whether the pump goes on.
func (s *Session) relayFrame(src, dst *leg, st *pumpState) bool {
	// The clock is read once before the wait and once after it; each
	// reading serves every check that follows (time.Now is two vDSO
	// calls, and six per frame were 2.4% of the CPU on 64 KiB echo).
	now := time.Now()
	s.setReadDeadline(src, now)
	// A leg the poller can relay (both legs plain TCP) goes back to it
	// as soon as it has nothing to read, rather than after parkAfter,
	// unless it carries frames larger than one read: the poller would
	// hand those straight back, a goroutine and two epoll updates per
	// message (-8% msgs/s on 64 KiB echo).
	src.br.parkOnBlock = !src.streamed && dst.raw != nil && s.canParkAt(src, now)
	h, err := readHeader(src.br)
	src.br.parkOnBlock = false
	if err == errWouldBlock {
		src.park = true
		return true
	}
	if err != nil {
		var pe *protocolError
		switch {
		case errors.As(err, &pe):
			s.failProtocol(src, dst, pe)
			return false
		case isTimeout(err) && s.onTimeout(src):
			return true
		}
		s.sourceGone(src, dst)
		return false
	}
	if pe := s.check(&h, st); pe != nil {
		s.failProtocol(src, dst, pe)
		return false
	}
	if int64(src.br.Buffered()) < int64(h.size)+h.length {
		// The rest of the frame is still on its way: it gets the idle
		// timeout, not the shorter parking deadline.
		s.extendReadDeadline(src)
	}
	now = time.Now()
	src.lastRead.Store(now.UnixNano())

	if h.isControl() {
		if !s.relayControl(src, dst, &h) {
			return false
		}
		src.br.release()
		return true
	}
	open := s.closeBy.Load() == 0 // once closing, frames are dropped unchecked
	if !open {
		st.text = false
	}
	if h.opcode != opContinuation {
		p := s.policy()
		st.text = open && h.opcode == opText && p.ValidateUTF8 && h.rsv&0x40 == 0
		st.utf8 = utf8Accept
		st.dropping = false
		if open && !s.allowMessage(src, p, now.UnixNano()) {
			if s.policy().DropOverRate {
				st.dropping = true
				s.actions(src).dropped.Add(1)
			} else {
				s.overRate(src)
			}
		}
	}
	if st.dropping {
		// A message over the rate is dropped whole: every frame of it.
		st.inMessage = !h.fin
		st.dropping = !h.fin
		if discard(src.br, int64(h.size)+h.length) != nil {
			s.sourceGone(src, dst)
			return false
		}
		src.br.release()
		return true
	}
	if st.text && !s.textOK(src, &h, st) {
		s.failProtocol(src, dst, errInvalidText)
		return false
	}
	if h.opcode != opContinuation {
		st.msgSize = 0
		src.messages.Add(1)
	}
	st.msgSize = addLength(st.msgSize, h.length)
	src.bytes.Store(addLength(src.bytes.Load(), h.length))
	st.inMessage = !h.fin
	if h.fin {
		src.sizes.observe(st.msgSize)
	}
	if s.maxMessage > 0 && st.msgSize > s.maxMessage {
		// Enforced from the header, before any of the frame is
		// forwarded: it is read and dropped. RFC 6455 §7.4.1: 1009 to
		// the sender; the receiver loses its peer, so it gets 1001.
		if st.fromClient {
			s.closeBoth(closeTooBig, errMessageTooBig.Error(), closeGoingAway, "client message too big")
		} else {
			s.closeBoth(closeGoingAway, "backend message too big", closeTooBig, errMessageTooBig.Error())
		}
	}
	if !s.forward(src, dst, &h, st, now) {
		s.sourceGone(src, dst)
		return false
	}
	if st.badText {
		s.failProtocol(src, dst, errInvalidText)
		return false
	}
	src.br.release()
	return true
}

// errInvalidText answers text that is not UTF-8 (RFC 6455 §8.1).
var errInvalidText = &protocolError{code: closeInvalidData, reason: "invalid UTF-8 in a text message"}

// textOK checks the payload of the text frame h as UTF-8, carrying on
// from the message's frames before it, when the frame is whole in src's
// buffer (forward checks a larger one as it streams). It reports false
// for invalid text, or a message that ends inside a character.
func (s *Session) textOK(src *leg, h *frameHeader, st *pumpState) bool {
	if h.length > int64(src.br.Size()-h.size) {
		return true
	}
	b, err := src.br.Peek(h.size + int(h.length))
	if err != nil {
		return true // the read fails again in forward, which handles it
	}
	u := utf8Masked(st.utf8, b[h.size:], h.mask, 0)
	if u == utf8Reject || h.fin && u != utf8Accept {
		return false
	}
	st.utf8 = u
	return true
}

// overRate closes the session because src sent a message over the
// rate: 1008 to it, 1001 to the other side. The message is read and
// dropped like any after a close.
func (s *Session) overRate(src *leg) {
	s.actions(src).rateLimited.Add(1) // the caller checked the session is open
	if src == s.client {
		s.closeBoth(closePolicyViolation, closeRateReason, closeGoingAway, "client message rate exceeded")
	} else {
		s.closeBoth(closeGoingAway, "backend message rate exceeded", closePolicyViolation, closeRateReason)
	}
}

// relayControl handles a control frame whose header is h: a close ends
// the direction (its code and reason go to dst), a ping or pong goes to
// dst unchanged so that the peers answer each other.
func (s *Session) relayControl(src, dst *leg, h *frameHeader) bool {
	var payload [maxControlPayload]byte
	total := h.size + int(h.length) // ≤ 14+125: fits the read buffer
	b, err := src.br.Peek(total)
	if err != nil {
		s.sourceGone(src, dst)
		return false
	}
	p := payload[:copy(payload[:], b[h.size:])]
	_, _ = src.br.Discard(total)
	if h.masked {
		maskBytes(h.mask, 0, p)
	}
	if h.opcode == opPong && isPingToken(p, &frameHeader{}) {
		return true // the answer to wsgate's own ping: consumed
	}
	if h.opcode != opClose {
		_ = dst.writeControl(h.opcode, p, s.write)
		return true
	}
	cp, err := parseClose(p)
	if err != nil {
		s.failProtocol(src, dst, err.(*protocolError))
		return false
	}
	src.closeCode = cp.code
	s.firstClose(src.closer(), cp.code, cp.reason)
	s.startClosing()
	dst.sendClose(relayCloseCode(cp.code), cp.reason)
	return false
}

// addLength adds n to total, saturating: declared lengths go up to 2^63-1.
func addLength(total, n int64) int64 {
	if total > math.MaxInt64-n {
		return math.MaxInt64
	}
	return total + n
}

// onTimeout handles a read deadline on a pump's source and reports
// whether the pump keeps reading.
func (s *Session) onTimeout(src *leg) bool {
	now := time.Now().UnixNano()
	if by := s.closeBy.Load(); by != 0 {
		// Closing: the peer has until closeBy to answer. An idle deadline
		// set just before the closing started may fire earlier.
		return now < by
	}
	if src == s.client && s.expires != 0 && now >= s.expires {
		s.expire()
		return true // read the close replies until closeBy
	}
	if at, dead := s.pingDue(src); at != 0 && now >= at {
		if dead {
			s.pingTimedOut(src, s.other(src))
			return false
		}
		s.ping(src)
	}
	if s.idle > 0 && time.Duration(now-s.lastActiveRun()) >= s.idle {
		s.closeBoth(closeGoingAway, "idle timeout", closeGoingAway, "idle timeout")
		return true // read the close replies until closeBy
	}
	// Not idle (the other direction may be busy), or only the parking
	// deadline passed: park the leg if it holds no partial frame.
	if s.canPark(src) {
		src.park = true
	}
	return true
}

// canPark reports whether src may wait in the shared poller: parking is
// available, src is plain TCP and holds no buffered bytes, the session is
// not closing and its idle deadline (if any) is far enough away.
func (s *Session) canPark(src *leg) bool { return s.canParkAt(src, time.Now()) }

func (s *Session) canParkAt(src *leg, now time.Time) bool {
	return parking && src.raw != nil && src.br.idle() && s.closeBy.Load() == 0 &&
		(s.idle <= 0 || s.idleLeft(now) > parkMargin) &&
		(s.policy().PingInterval <= 0 || !s.pingNear(src, now.UnixNano())) &&
		!s.expiresNear(src, now.UnixNano())
}

// other returns the leg that is not l.
func (s *Session) other(l *leg) *leg {
	if l == s.client {
		return s.backend
	}
	return s.client
}

// idleLeft is the time until the idle timeout closes the session.
func (s *Session) idleLeft(now time.Time) time.Duration {
	return time.Unix(0, s.lastActiveRun()).Add(s.idle).Sub(now)
}

// check validates a frame header against RFC 6455 §5 and the message
// state of its direction.
func (s *Session) check(h *frameHeader, st *pumpState) *protocolError {
	if st.fromClient != h.masked {
		if st.fromClient {
			return protoErr("unmasked client frame")
		}
		return protoErr("masked server frame")
	}
	rsv := h.rsv
	if s.deflate && (h.opcode == opText || h.opcode == opBinary) {
		rsv &^= 0x40 // RSV1 marks a compressed message (RFC 7692 §6)
	}
	if rsv != 0 {
		return protoErr("reserved bits set without a negotiated extension")
	}
	switch h.opcode {
	case opContinuation:
		if !st.inMessage {
			return protoErr("continuation frame without a message")
		}
	case opText, opBinary:
		if st.inMessage {
			return protoErr("new data frame inside a fragmented message")
		}
	case opClose, opPing, opPong:
		if !h.fin {
			return protoErr("fragmented control frame")
		}
		if h.length > maxControlPayload {
			return protoErr("control frame payload over 125 bytes")
		}
	default:
		return protoErr("reserved opcode %#x", h.opcode)
	}
	return nil
}

// forward copies one data frame from src to dst. Frames toward the backend
// are re-masked with a key wsgate chose (RFC 6455 §5.3: the masking key
// must be unpredictable to the application that supplies the payload).
// Frames for a leg that is closed are read and dropped. A failed write
// breaks dst (see breakLocked). It reports false when reading src failed.
func (s *Session) forward(src, dst *leg, h *frameHeader, st *pumpState, now time.Time) bool {
	dst.mu.Lock()
	defer func() {
		// The frames written under this lock end where st says (batch
		// may have added some): an injected message waits for the
		// rest of a fragmented one.
		dst.midMessage = st.inMessage
		dst.mu.Unlock()
	}()
	if dst.closeSent {
		st.text = false // dropped unchecked: the check cannot go on
		return discard(src.br, int64(h.size)) == nil && discard(src.br, h.length) == nil
	}
	srcKey := h.mask // the key the payload is masked with as read
	var xor [4]byte  // old key XOR new key: re-masks in one pass
	if dst.masked {
		newKey := rand.Uint32()
		old := h.mask
		h.mask = [4]byte{byte(newKey), byte(newKey >> 8), byte(newKey >> 16), byte(newKey >> 24)}
		for i := range xor {
			xor[i] = old[i] ^ h.mask[i]
		}
	}
	if s.write > 0 {
		dst.writeWithinAtLocked(s.write, now)
	}
	if h.length <= int64(src.br.Size()-h.size) {
		// Small frame: forward it from the read buffer in one write.
		total := h.size + int(h.length)
		b, err := src.br.Peek(total)
		if err != nil {
			return false
		}
		if dst.masked {
			copy(b[h.size-4:h.size], h.mask[:])
			maskBytes(xor, 0, b[h.size:])
		}
		// Data frames that follow, already whole in the buffer (a message
		// sent as many frames, or a burst), go out in the same write.
		// Nothing is held back for frames not yet read: sending the
		// frames of an unfinished message with MSG_MORE was measured on
		// 64 KiB echo in 4 KiB frames. Pushed before each wait for data,
		// or within 1 ms, it saved no proxy CPU; held until the message
		// ends (up to the kernel's 200 ms), proxy CPU fell 15-25% but
		// partly because the peers' ACKs then sent the held segments on
		// the peers' CPU, and a sender that pauses mid-message would
		// see its bytes held.
		total += s.batch(src, dst, st, total, now.UnixNano())
		b, _ = src.br.Peek(total)
		_, werr := dst.write(b)
		_, _ = src.br.Discard(total)
		if werr != nil {
			dst.failLocked(werr)
		}
		return true
	}
	src.streamed = true
	dst.wbuf = appendHeader(dst.wbuf[:0], h)
	if _, err := src.br.Discard(h.size); err != nil {
		return false
	}
	_, werr := dst.write(dst.wbuf)
	if werr != nil {
		dst.failLocked(werr)
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := *bp
	pos, textPos := 0, 0
	for remaining := h.length; remaining > 0; {
		n := min(int64(len(buf)), remaining)
		m, err := src.br.Read(buf[:n])
		if m == 0 && err != nil {
			// Part of the frame went out and the rest never will: no
			// close frame can follow on dst, so cut it now rather than
			// leave its peer waiting for the rest.
			if werr == nil {
				dst.breakLocked()
			}
			return false
		}
		remaining -= int64(m)
		if werr != nil {
			st.text = false // dropped unchecked: the check cannot go on
			continue        // keep reading src in step; dst is dead
		}
		if st.text {
			// Checked before it goes out. Invalid text in a frame this
			// large is found with part of the frame already sent, so
			// dst is cut: no close frame can follow a partial frame.
			u := utf8Masked(st.utf8, buf[:m], srcKey, textPos)
			textPos += m
			if u == utf8Reject || remaining == 0 && h.fin && u != utf8Accept {
				st.badText = true
				dst.breakLocked()
				return true
			}
			st.utf8 = u
		}
		if dst.masked {
			pos = maskBytes(xor, pos, buf[:m])
		}
		// The write deadline counts from now, not from the last write:
		// the read before it may have waited for a sender that paused
		// mid-frame, which is no fault of dst.
		if s.write > 0 {
			dst.writeWithinLocked(s.write)
		}
		if _, werr = dst.write(buf[:m]); werr != nil {
			dst.failLocked(werr)
		}
		s.extendReadDeadline(src)
	}
	return true
}

// batch prepares the data frames that follow the first n buffered bytes
// of src and are already complete in its buffer (see prepare), and
// returns the number of bytes prepared.
func (s *Session) batch(src, dst *leg, st *pumpState, n int, now int64) int {
	return s.prepare(src, dst, st, src.br.bufferedAfter(n), now)
}

// prepare readies the complete data frames at the start of b for dst:
// each is checked and counted like relayFrame does, and re-masked in
// place toward the backend. It stops at anything relayFrame must handle
// itself — a control frame, a protocol error, a message over the limit
// or the rate, invalid text, an incomplete frame — and returns the
// number of bytes prepared. The caller holds dst.mu and has checked that
// dst is open.
func (s *Session) prepare(src, dst *leg, st *pumpState, b []byte, now int64) int {
	added := 0
	var messages, bytes int64
	p := s.policy()
	defer func() {
		// Counted once per batch: one atomic update per counter.
		if messages > 0 {
			src.messages.Add(messages)
		}
		if bytes > 0 {
			src.bytes.Store(addLength(src.bytes.Load(), bytes))
		}
	}()
	for {
		rest := b[added:]
		h, ok, err := parseHeader(rest)
		if !ok || err != nil || h.isControl() || s.check(&h, st) != nil {
			return added
		}
		if h.length > int64(len(rest)-h.size) { // declared lengths reach 2^63-1
			return added
		}
		size := int64(h.size) + h.length
		msg := h.length
		if h.opcode == opContinuation {
			msg = addLength(st.msgSize, h.length)
		}
		if s.maxMessage > 0 && msg > s.maxMessage || st.dropping {
			return added
		}
		text, u := st.text, st.utf8
		if h.opcode != opContinuation {
			text, u = h.opcode == opText && p.ValidateUTF8 && h.rsv&0x40 == 0, utf8Accept
		}
		if text {
			u = utf8Masked(u, rest[h.size:size], h.mask, 0)
			if u == utf8Reject || h.fin && u != utf8Accept {
				return added
			}
		}
		if h.opcode != opContinuation {
			// Last, as it takes a token: relayFrame asks again for a
			// message stopped here.
			if !s.allowMessage(src, p, now) {
				return added
			}
			messages++
		}
		st.text, st.utf8 = text, u
		st.msgSize = msg
		bytes += h.length // whole frames in one read: no overflow
		st.inMessage = !h.fin
		if h.fin {
			src.sizes.observe(msg)
		}
		if dst.masked {
			f := rest[:size]
			var xor [4]byte
			k := newMaskKey()
			for i := range xor {
				xor[i] = h.mask[i] ^ k[i]
			}
			copy(f[h.size-4:h.size], k[:])
			maskBytes(xor, 0, f[h.size:])
		}
		added += int(size)
	}
}

// discard reads and drops n bytes from br.
func discard(br *frameReader, n int64) error {
	for n > 0 {
		m, err := br.Discard(int(min(n, 1<<30)))
		n -= int64(m)
		if err != nil {
			return err
		}
	}
	return nil
}

// failProtocol answers a protocol violation by src: the code from pe to
// src, a close to dst, then a half-close toward src so that it sees the
// end right after the close frame (RFC 6455 §7.1.7).
func (s *Session) failProtocol(src, dst *leg, pe *protocolError) {
	s.reg.log.Info("websocket protocol error", "session", s.ID(), "route", s.route.Name, "side", src.side(), "error", pe.reason)
	switch {
	case pe.code == closeInvalidData:
		// RFC 6455 §8.1: 1007 to the sender; the other side just loses
		// its peer.
		s.actions(src).invalidUTF8.Add(1)
		if src == s.client {
			s.closeBoth(pe.code, pe.reason, closeGoingAway, "client sent invalid UTF-8")
		} else {
			s.closeBoth(closeGoingAway, "backend sent invalid UTF-8", pe.code, pe.reason)
		}
	case src == s.client:
		s.closeBoth(pe.code, pe.reason, closeGoingAway, "client protocol error")
	default:
		s.closeBoth(closeInternalError, "backend protocol error", pe.code, pe.reason)
	}
	closeWrite(src.conn)
	// Read what src still sends until it closes, so that closing our end
	// does not reset the connection under the close frame.
	_ = src.conn.SetReadDeadline(time.Unix(0, s.closeBy.Load()))
	bp := chunkPool.Get().(*[]byte)
	_, _ = io.CopyBuffer(io.Discard, readerOnly{src.br}, *bp)
	chunkPool.Put(bp)
}

// sourceGone handles the end of src's connection without a close frame.
func (s *Session) sourceGone(src, dst *leg) {
	src.mu.Lock()
	timedOut := src.writeTimedOut
	src.mu.Unlock()
	if timedOut {
		// wsgate cut src itself: it did not read what was written to
		// it within the write timeout.
		s.firstClose(closedByWsgate, closeAbnormal, src.side()+" write timeout")
	}
	s.firstClose(src.closer(), closeAbnormal, "")
	src.mu.Lock()
	src.closeSent = true // nothing more can be written to a gone peer
	src.mu.Unlock()
	// Closing first: from now on every read is bounded by closeBy, and
	// no keepalive ping is due while the close below is written (which
	// may take up to closeWait toward a slow reader).
	s.startClosing()
	if src == s.client {
		dst.sendClose(closeGoingAway, "client went away")
	} else {
		// RFC 6455 §7.4.1: 1011 for an unexpected condition; the client
		// must never see 1006 because the backend vanished.
		dst.sendClose(closeInternalError, "backend went away")
	}
}

// setReadDeadline bounds the next read from src: by closeBy while
// closing, else by the idle timeout counted from the last frame either
// way.
func (s *Session) setReadDeadline(src *leg, now time.Time) {
	if by := s.closeBy.Load(); by != 0 {
		src.readBy = by
		_ = src.conn.SetReadDeadline(time.Unix(0, by))
		return
	}
	var dl time.Time
	slack := s.idle / 16
	if s.idle > 0 {
		dl = time.Unix(0, s.lastActiveRun()).Add(s.idle)
	}
	if src == s.client && s.expires != 0 && (dl.IsZero() || s.expires < dl.UnixNano()) {
		dl = time.Unix(0, s.expires)
	}
	if at, dead := s.pingDue(src); at != 0 {
		if dead {
			// A ping is out: its answer may already wait in the socket
			// (this pump was busy writing), so the read gets a moment.
			at = max(at, now.Add(5*time.Millisecond).UnixNano())
		} else {
			// A ping that is due but could not be sent (see ping) is
			// tried again shortly, not in a loop.
			at = max(at, now.Add(pingRetry).UnixNano())
		}
		if t := time.Unix(0, at); dl.IsZero() || t.Before(dl) {
			dl, slack = t, s.policy().PingTimeout/16
		}
	}
	if src.raw == nil {
		// A leg that never parks (TLS) looks again now and then, so that
		// a reload that turns pings on reaches it (see SetPolicy).
		every := time.Duration(recheckEvery.Load())
		if r := now.Add(every); dl.IsZero() || r.Before(dl) {
			dl, slack = r, every/16
		}
	}
	if s.canParkAt(src, now) {
		if p := now.Add(parkAfter); dl.IsZero() || p.Before(dl) {
			dl, slack = p, parkAfter/4
		}
	} else if dl.IsZero() {
		return
	}
	// A deadline a little later than the one in force (still ahead) is
	// not worth a timer update on every frame; the timeout then comes at
	// most slack early, and onTimeout only re-checks.
	if d := dl.UnixNano() - src.readBy; d >= 0 && d <= int64(slack) && src.readBy > now.UnixNano() {
		return
	}
	src.readBy = dl.UnixNano()
	_ = src.conn.SetReadDeadline(dl)
	// startClosing may have set closeBy on this conn between the check
	// above and the call: re-apply it, or this read could wait for the
	// whole idle timeout instead of closeWait.
	if by := s.closeBy.Load(); by != 0 {
		_ = src.conn.SetReadDeadline(time.Unix(0, by))
	}
}

// extendReadDeadline keeps a long frame from tripping the idle timeout
// while its payload still flows.
func (s *Session) extendReadDeadline(src *leg) {
	if s.closeBy.Load() != 0 {
		return
	}
	// The frame's bytes show the peer alive: no keepalive ping is due,
	// and a deadline set for one must not cut the frame.
	if s.idle > 0 {
		now := time.Now()
		src.lastRead.Store(now.UnixNano())
		src.readBy = now.Add(s.idle).UnixNano()
		_ = src.conn.SetReadDeadline(now.Add(s.idle))
	} else if parking || s.policy().PingInterval > 0 {
		if s.policy().PingInterval > 0 {
			src.lastRead.Store(time.Now().UnixNano())
		}
		src.readBy = 0
		_ = src.conn.SetReadDeadline(time.Time{}) // lift the parking (or ping) deadline
	}
	// startClosing may have set closeBy in between: re-apply it.
	if by := s.closeBy.Load(); by != 0 {
		_ = src.conn.SetReadDeadline(time.Unix(0, by))
	}
}

// writeWithinLocked bounds the next write to l by d from now. The deadline
// moves only when it is more than d/16 off, so a busy leg pays for a
// timer update every few seconds rather than on every frame. l.mu held.
func (l *leg) writeWithinLocked(d time.Duration) { l.writeWithinAtLocked(d, time.Now()) }

// writeWithinAtLocked is writeWithinLocked with the time of now.
func (l *leg) writeWithinAtLocked(d time.Duration, now time.Time) {
	by := now.Add(d).UnixNano()
	if diff := by - l.writeBy; diff >= 0 && diff <= int64(d/16) {
		return
	}
	l.writeBy = by
	_ = l.conn.SetWriteDeadline(time.Unix(0, by))
}

// sendClose writes a close frame to l once; later calls do nothing.
func (l *leg) sendClose(code uint16, reason string) {
	if l.reserveClose() {
		l.writeClose(code, reason)
	}
}

// reserveClose claims the one close frame l may get and reports whether
// the caller got it; from then on nothing else is written to l, so the
// caller writes the frame (writeClose) without holding mu. It waits for a
// frame in flight to finish: a close lands only between frames.
func (l *leg) reserveClose() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeSent {
		return false
	}
	l.closeSent = true
	return true
}

// writeClose writes a close frame reserved with reserveClose, bounded by
// closeWait; a failed write cuts the connection.
func (l *leg) writeClose(code uint16, reason string) {
	buf := controlPool.Get().(*controlBuf)
	defer controlPool.Put(buf)
	b := appendCloseFrame(buf[:0], code, reason, l.masked, newMaskKey())
	_ = l.conn.SetWriteDeadline(time.Now().Add(closeWait))
	if _, err := l.write(b); err != nil {
		_ = l.conn.Close()
	}
}

// controlBuf holds one control frame. Close frames are built in pooled
// ones: the write keeps a reference (so a stack buffer would escape),
// and thousands of sessions closing at once should not each leave one
// for the collector.
type controlBuf = [maxFrameHeader + maxControlPayload]byte

var controlPool = sync.Pool{New: func() any { return new(controlBuf) }}

// writeControl writes a ping or pong to l unless l is closed.
func (l *leg) writeControl(opcode byte, p []byte, timeout time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeSent {
		return nil
	}
	l.wbuf = appendControlFrame(l.wbuf[:0], opcode, p, l.masked, newMaskKey())
	if timeout <= 0 || timeout > closeWait {
		timeout = closeWait
	}
	l.writeWithinLocked(timeout)
	_, err := l.write(l.wbuf)
	if err != nil {
		l.failLocked(err)
	}
	return err
}

// failLocked is breakLocked after a write that failed with err,
// remembering whether wsgate's write timeout cut the peer (a slow
// reader) rather than the peer going away. l.mu must be held.
func (l *leg) failLocked(err error) {
	if isTimeout(err) {
		l.writeTimedOut = true
	}
	l.breakLocked()
}

// breakLocked marks l dead after a failed or unfinished write and closes
// its connection: a partial frame may be on the wire, so not even a close
// frame can follow. The pump reading l then fails at once, which tells the
// other peer (sourceGone). l.mu must be held.
func (l *leg) breakLocked() {
	l.closeSent = true
	l.dead.Store(true)
	_ = l.conn.Close()
	unparkLeg(l) // a parked pump on l would never hear of the close
}

func newMaskKey() [4]byte {
	k := rand.Uint32()
	return [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
}

// readerOnly hides a reader's WriteTo so io.CopyBuffer uses the buffer.
type readerOnly struct{ io.Reader }

// closeWrite half-closes c when it supports it (TCP FIN, TLS close_notify).
func closeWrite(c net.Conn) {
	if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
		c = u.UnsafeConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// log writes the session summary when it ends: who closed first
// (closed_by) with the code they sent (close_code; 1006: the connection
// ended without a close frame), and the close code each side sent.
func (s *Session) log() {
	s.endMu.Lock()
	by, code, reason := s.closedBy, s.firstCode, s.firstReason
	s.endMu.Unlock()
	if by == closedByNone {
		by, code = closedByWsgate, closeAbnormal
	}
	s.reg.log.LogAttrs(context.Background(), slog.LevelInfo, "websocket closed",
		slog.String("session", s.ID()),
		slog.String("route", s.route.Name),
		slog.String("client", s.remote),
		slog.String("backend", hostPort(s.target)),
		slog.Int64("duration_ms", time.Since(time.Unix(0, s.start)).Milliseconds()),
		slog.Int("client_close", int(s.client.closeCode)),
		slog.Int("backend_close", int(s.backend.closeCode)),
		slog.String("closed_by", by.String()),
		slog.Int("close_code", int(code)),
		slog.String("close_reason", reason),
		slog.Int64("client_messages", s.client.messages.Load()),
		slog.Int64("client_bytes", s.client.bytes.Load()),
		slog.Int64("backend_messages", s.backend.messages.Load()),
		slog.Int64("backend_bytes", s.backend.bytes.Load()),
	)
}

// hostPort returns the host:port of a target URL (what the logs call the
// backend): the session keeps only the URL.
func hostPort(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		return url[i+3:]
	}
	return url
}
