package wsrelay

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// parkAfter is how long a leg may sit idle in its pump goroutine before
// the pump parks it in its session's poller and exits. Busy legs on a
// goroutine never park, so large messages do not pay for it; long-idle
// sessions cost no stack.
const parkAfter = 200 * time.Millisecond

// sweepEvery is how often a poller looks for parked legs whose session
// needs them back (see due).
const sweepEvery = time.Second

// parkMargin: a leg parks only while its idle deadline is further away
// than this, so the sweep always returns it in time.
const parkMargin = 2 * sweepEvery

// parking reports whether idle legs can be parked on this platform.
const parking = netpoll.Supported

// poller waits for many legs in one netpoll.Poller and one goroutine. A
// parked leg has no goroutine and no read buffer: it is one 32-byte slot.
//
// When both legs of a session are plain TCP, the poller also relays: on
// readiness it reads the leg once and, when that read holds only whole
// data frames, writes them to the other leg, all without a goroutine of
// the session (serve). That is the event loop of nginx or HAProxy: one
// read and one write per frame, several legs per wake-up, no scheduler
// hop. Anything else — a control frame, a frame larger than what was
// read, a write that would block — hands the leg to a pump goroutine,
// which parks it again once it has been idle for parkAfter.
//
// There is one poller per GOMAXPROCS; sessions are spread over them.
// Pollers live as long as the process, like the runtime's own network
// poller.
type poller struct {
	np *netpoll.Poller

	mu    sync.Mutex
	slots parkSlots // guarded by mu

	pings []parkedPump // used by sweep only: kept between sweeps
}

// parkSlots holds the parked legs of a poller in fixed pages of slots
// rather than a map: a slot costs 32 bytes, and a freed one is reused.
// A leg parked in slot i carries the id gen<<32|i (in its parkID and in
// its epoll registration); gen changes every time a slot is taken, so an
// event that arrives for an earlier occupant of the slot finds no match.
type parkSlots struct {
	pages [][]parkedPump
	free  []uint32 // indexes of empty slots
	gen   uint32
}

const parkPage = 256 // slots per page (8 KiB)

// add parks pp in a free slot and returns its id (stored in pp.src.parkID).
func (ps *parkSlots) add(pp parkedPump) uint64 {
	var i uint32
	if n := len(ps.free); n > 0 {
		i = ps.free[n-1]
		ps.free = ps.free[:n-1]
	} else {
		i = uint32(len(ps.pages) * parkPage)
		ps.pages = append(ps.pages, make([]parkedPump, parkPage))
		for j := i + parkPage - 1; j > i; j-- {
			ps.free = append(ps.free, j)
		}
	}
	ps.gen++
	id := uint64(ps.gen)<<32 | uint64(i)
	pp.src.parkID = id
	*ps.slot(i) = pp
	return id
}

func (ps *parkSlots) slot(i uint32) *parkedPump {
	return &ps.pages[i/parkPage][i%parkPage]
}

// take empties the slot of id and returns what was parked there, if it
// still is. The slot stays reserved for put (the leg's epoll registration
// still carries id) until release frees it.
func (ps *parkSlots) take(id uint64) (parkedPump, bool) {
	i := uint32(id)
	if int(i/parkPage) >= len(ps.pages) {
		return parkedPump{}, false
	}
	sl := ps.slot(i)
	if sl.src == nil || sl.src.parkID != id {
		return parkedPump{}, false
	}
	pp := *sl
	*sl = parkedPump{}
	return pp, true
}

// put parks pp again in the slot it was taken from.
func (ps *parkSlots) put(id uint64, pp parkedPump) { *ps.slot(uint32(id)) = pp }

// release frees the (empty) slot of id.
func (ps *parkSlots) release(id uint64) { ps.free = append(ps.free, uint32(id)) }

// remove takes the leg parked under id out for good.
func (ps *parkSlots) remove(id uint64) (parkedPump, bool) {
	pp, ok := ps.take(id)
	if ok {
		ps.release(id)
	}
	return pp, ok
}

// removeLeg takes l out for good if it is parked. (Its parkID may be
// stale, left from an earlier park.)
func (ps *parkSlots) removeLeg(l *leg) (parkedPump, bool) {
	i := uint32(l.parkID)
	if int(i/parkPage) >= len(ps.pages) || ps.slot(i).src != l {
		return parkedPump{}, false
	}
	return ps.remove(l.parkID)
}

type parkedPump struct {
	s        *Session
	src, dst *leg
	// relay: both legs are plain TCP, so the poller relays src's frames
	// itself (edge-triggered registration); otherwise src is registered
	// for one event, which resumes its pump.
	relay bool
}

var (
	pollers     []*poller // nil if epoll is unavailable; set once by pickPoller
	pollersOnce sync.Once
	pollerNext  atomic.Uint32
	// pollersUp is pollers once pickPoller has made them, for readers
	// that must not make them (Registry.Parked, from a scrape).
	pollersUp atomic.Pointer[[]*poller]
)

// pickPoller returns the poller for a new session, or nil when legs
// cannot park on this system.
func pickPoller() *poller {
	pollersOnce.Do(func() {
		n := runtime.GOMAXPROCS(0)
		for range n {
			p, err := newPoller()
			if err != nil {
				pollers = nil // legs keep waiting on their goroutines
				return
			}
			pollers = append(pollers, p)
		}
		for _, p := range pollers {
			go p.np.Run(sweepEvery, p.dispatch, p.sweep)
		}
		pollersUp.Store(&pollers)
	})
	if len(pollers) == 0 {
		return nil
	}
	return pollers[int(pollerNext.Add(1))%len(pollers)]
}

func newPoller() (*poller, error) {
	np, err := netpoll.New()
	if err != nil {
		return nil, err
	}
	return &poller{np: np}, nil
}

// park registers src with the session's poller and reports whether it
// did; the caller's goroutine then returns. The poller relays src's
// frames itself, or resumes the pump in a new goroutine when src is
// readable, closed, or due for a deadline.
func (s *Session) park(src, dst *leg) bool {
	p := s.pl
	if p == nil || src.raw == nil || !src.br.idle() {
		return false
	}
	relay := dst.raw != nil
	p.mu.Lock()
	id := p.slots.add(parkedPump{s: s, src: src, dst: dst, relay: relay})
	p.mu.Unlock()
	// The poller pins the descriptor while it registers it, so it
	// cannot be closed and reused by another connection meanwhile.
	err := p.np.Arm(src.raw, id, relay)
	if err != nil {
		// Closed, or epoll refused: keep the pump on its goroutine.
		p.mu.Lock()
		_, mine := p.slots.remove(id)
		p.mu.Unlock()
		return !mine // someone already resumed it: this goroutine must go
	}
	return true
}

// unpark resumes the session's parked pumps at once (its connections are
// closing): each fails on its next read and ends.
func (s *Session) unpark() {
	p := s.pl
	if p == nil {
		return
	}
	var wake []parkedPump
	p.mu.Lock()
	for _, l := range []*leg{s.client, s.backend} {
		if l == nil {
			continue
		}
		if pp, ok := p.slots.removeLeg(l); ok {
			wake = append(wake, pp)
		}
	}
	p.mu.Unlock()
	for _, pp := range wake {
		p.handOff(pp)
	}
}

// unparkLeg resumes the pump parked on l, if any: its connection was
// closed, which removes it from epoll without an event.
func unparkLeg(l *leg) {
	p := l.pl
	if p == nil {
		return
	}
	p.mu.Lock()
	pp, ok := p.slots.removeLeg(l)
	p.mu.Unlock()
	if ok {
		p.handOff(pp)
	}
}

// handOff resumes pp's pump on a goroutine. The caller has taken pp out
// of the parked map; a relaying registration is removed first, or its
// edge-triggered events would keep waking the poller while the
// goroutine reads.
func (p *poller) handOff(pp parkedPump) {
	pp.s.reg.handOffs.Add(1)
	if pp.relay {
		p.np.Disarm(pp.src.raw)
	}
	go pp.s.pumpLoop(pp.src, pp.dst)
}

// dispatch handles an event for the leg parked under id, if it is still
// parked: a relaying leg is served here and stays parked unless it needs
// its goroutine (or its pump ended here); any other resumes its pump.
func (p *poller) dispatch(id uint64, end bool, now time.Time) {
	p.mu.Lock()
	pp, ok := p.slots.take(id)
	if ok && !pp.relay {
		p.slots.release(id)
	}
	p.mu.Unlock()
	if !ok {
		return
	}
	if !pp.relay {
		go pp.s.pumpLoop(pp.src, pp.dst)
		return
	}
	res := p.serveSafely(pp, now)
	if res == serveStay && end {
		// The peer's FIN (or an error) came with this event and is
		// reported once: read again, to the end of the stream.
		if res = p.serveSafely(pp, now); res == serveStay {
			res = serveHandOff
		}
	}
	p.mu.Lock()
	// closeConns sets connsClosed, and breakLocked sets dead, before they
	// look for parked legs: either they find this one, or this check sees
	// the flag. A closing session's legs stay: the sweep hands them back
	// when the close handshake's time is up (see due).
	if res == serveStay && !pp.s.connsClosed.Load() && !pp.src.dead.Load() {
		p.slots.put(id, pp)
		p.mu.Unlock()
		return
	}
	p.slots.release(id)
	p.mu.Unlock()
	if res == serveEnded {
		p.np.Disarm(pp.src.raw)
		pp.s.pumpReturned()
		return
	}
	p.handOff(pp)
}

// served is what serve did with a parked leg.
type served uint8

const (
	serveStay    served = iota // the leg stays parked
	serveHandOff               // its pump goes on on a goroutine
	serveEnded                 // its pump is over: a close frame or the end of its stream was handled
)

// serveSafely is serve with the pump's recover: a bug costs the session,
// not the poller and every session on it.
func (p *poller) serveSafely(pp parkedPump, now time.Time) (res served) {
	defer func() {
		if v := recover(); v != nil {
			pp.s.reg.log.Error("panic in websocket relay", "session", pp.s.ID(), "route", pp.s.route.Name, "side", pp.src.side(),
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			pp.s.closeConns()
			res = serveHandOff
		}
	}()
	return pp.s.serve(pp.src, pp.dst, now)
}

// serve relays what src has for dst, on the poller's goroutine: one
// non-blocking read and, for the whole data frames in it, one
// non-blocking write of all of them. The answers to wsgate's pings are
// consumed here, and so are a close frame and the end of the stream,
// which end src's pump (serveEnded) without a goroutine or a buffer per
// session: thousands of sessions closing at once cost the poller's one
// buffer, not one each. Anything else — another control frame, a frame
// larger than what was read, a write that would block — hands src to its
// pump goroutine (serveHandOff) with the bytes read still in src.br. When
// dst took only part of the frames, src.pending of those bytes are
// prepared for dst and dst.mu stays locked for the goroutine to finish
// the write (see finishPending).
func (s *Session) serve(src, dst *leg, now time.Time) served {
	br := src.br
	n, err := br.readNow()
	if err == syscall.EAGAIN {
		br.release() // a stale event: the data was read earlier
		return serveStay
	}
	if n <= 0 || err != nil {
		return s.goneNow(src, dst) // end of stream, or an error
	}
	// A read that filled the buffer may have left more in the socket:
	// with edge-triggered events only a goroutine reads it.
	full := br.w == len(*br.bp)
	for {
		b := br.bufferedAfter(0)
		if len(b) == 0 {
			if full {
				return serveHandOff
			}
			br.release()
			return serveStay
		}
		if m, own := s.ownPong(src, b); own {
			// The answer to wsgate's keepalive ping: consumed here, so
			// an idle leg answering pings never needs a goroutine.
			src.lastRead.Store(now.UnixNano())
			_, _ = br.Discard(m)
			continue
		}
		if res, ok := s.closeNow(src, dst, b, now); ok {
			return res
		}
		if !dst.mu.TryLock() {
			return serveHandOff // a write to dst is in progress: the pump waits for it
		}
		k := s.prepare(src, dst, &src.st, b, now.UnixNano())
		if k == 0 {
			dst.mu.Unlock()
			src.streamed = src.streamed || full || incompleteFrame(b)
			return serveHandOff
		}
		src.lastRead.Store(now.UnixNano())
		if dst.closeSent {
			// dst is closed (or closing): its frames are read and
			// dropped, as forward does.
			dst.mu.Unlock()
			_, _ = br.Discard(k)
			continue
		}
		dst.midMessage = src.st.inMessage // dst.mu is held until the k bytes are out
		w, werr := dst.writeNow(b[:k])
		_, _ = br.Discard(w)
		switch {
		case werr == nil || werr == syscall.EAGAIN:
			if w < k {
				src.pending = int32(k - w)
				return serveHandOff // dst.mu stays locked for the pump
			}
		default:
			// dst is gone: its frames are dropped, its pump hears of it.
			_, _ = br.Discard(k - w)
			dst.breakLocked()
		}
		dst.mu.Unlock()
	}
}

// closeNow handles a close frame from src at the start of b, if there is
// a whole one, as relayControl does: its code and reason go to dst, and
// src's pump is over (what follows a close is never read). A close frame
// that breaks the protocol is the pump's to answer.
func (s *Session) closeNow(src, dst *leg, b []byte, now time.Time) (served, bool) {
	h, ok, err := parseHeader(b)
	if err != nil || !ok || h.opcode != opClose || len(b) < h.size+int(h.length) {
		return 0, false
	}
	if s.check(&h, &src.st) != nil {
		return serveHandOff, true
	}
	var payload [maxControlPayload]byte
	p := payload[:copy(payload[:], b[h.size:h.size+int(h.length)])]
	if h.masked {
		maskBytes(h.mask, 0, p)
	}
	cp, err := parseClose(p)
	if err != nil {
		return serveHandOff, true
	}
	src.lastRead.Store(now.UnixNano())
	src.closeCode = cp.code
	s.firstClose(src.closer(), cp.code, cp.reason)
	s.startClosing()
	dst.closeSoon(relayCloseCode(cp.code), cp.reason)
	_, _ = src.br.Discard(len(b))
	src.br.release()
	return serveEnded, true
}

// goneNow handles the end of src's stream (or a read error) on the
// poller, as sourceGone does on a pump goroutine.
func (s *Session) goneNow(src, dst *leg) served {
	if !src.mu.TryLock() {
		return serveHandOff
	}
	timedOut := src.writeTimedOut
	src.closeSent = true // nothing more can be written to a gone peer
	src.mu.Unlock()
	if timedOut {
		s.firstClose(closedByWsgate, closeAbnormal, src.side()+" write timeout")
	}
	s.firstClose(src.closer(), closeAbnormal, "")
	if src == s.client {
		dst.closeSoon(closeGoingAway, "client went away")
	} else {
		dst.closeSoon(closeInternalError, "backend went away")
	}
	s.startClosing()
	src.br.release()
	return serveEnded
}

// closeSoon is sendClose without waiting, for the poller: the close frame
// is written at once when l's socket takes it; otherwise (a write to l in
// progress, a full socket, TLS) a goroutine finishes the job.
func (l *leg) closeSoon(code uint16, reason string) {
	if !l.mu.TryLock() {
		go l.sendClose(code, reason)
		return
	}
	if l.closeSent {
		l.mu.Unlock()
		return
	}
	l.closeSent = true // reserved: nothing else is written to l from now on
	l.mu.Unlock()
	l.writeCloseSoon(code, reason)
}

// writeCloseSoon writes a close frame reserved with reserveClose without
// waiting: at once when l's socket takes it, else (a full socket, TLS)
// on a goroutine.
func (l *leg) writeCloseSoon(code uint16, reason string) {
	if l.raw == nil {
		go l.writeClose(code, reason)
		return
	}
	buf := controlPool.Get().(*controlBuf)
	defer controlPool.Put(buf)
	b := appendCloseFrame(buf[:0], code, reason, l.masked, newMaskKey())
	n, err := l.writeNow(b)
	switch {
	case n == len(b):
	case err == nil || err == syscall.EAGAIN:
		rest := append([]byte(nil), b[n:]...)
		go func() {
			_ = l.conn.SetWriteDeadline(time.Now().Add(closeWait))
			if _, err := l.write(rest); err != nil {
				_ = l.conn.Close()
			}
		}()
	default:
		_ = l.conn.Close()
	}
}

// incompleteFrame reports whether b starts with a frame (or header) that
// is not all there: a frame larger than one read, which a pump goroutine
// streams.
func incompleteFrame(b []byte) bool {
	h, ok, err := parseHeader(b)
	return err == nil && (!ok || h.length > int64(len(b)-h.size))
}

// sweep resumes parked pumps whose session has a deadline due: the idle
// timeout, or the end of a close handshake. The resumed pump finds its
// read deadline passed and acts as if it had waited on its goroutine.
// The mutex is held for one page at a time, so parking and unparking on
// other goroutines wait for at most parkPage checks, however many legs
// are parked.
//
// It also sends the keepalive pings due on parked legs (see pingNow),
// outside the mutex.
func (p *poller) sweep(now time.Time) {
	wake, ping := p.takeDue(now)
	for _, pp := range wake {
		p.handOff(pp)
	}
	for _, pp := range ping {
		pp.s.pingNow(pp.src, now.UnixNano())
	}
	clear(ping) // the slice is kept for the next sweep: drop the pointers
	p.pings = ping[:0]
}

// takeDue takes the parked pumps that are due (see sweep) out of the
// poller, and lists the parked legs due for a keepalive ping.
func (p *poller) takeDue(now time.Time) (wake, ping []parkedPump) {
	ping = p.pings
	for pg := 0; ; pg++ {
		p.mu.Lock()
		if pg >= len(p.slots.pages) {
			p.mu.Unlock()
			break
		}
		page := p.slots.pages[pg]
		for i := range page {
			pp := page[i]
			switch {
			case pp.src == nil:
			case pp.s.due(pp.src, now):
				p.slots.remove(pp.src.parkID)
				wake = append(wake, pp)
			case pp.s.pingSoon(pp.src, now.UnixNano()):
				ping = append(ping, pp)
			}
		}
		p.mu.Unlock()
	}
	return wake, ping
}

// due reports whether the parked pump of s reading src must go back to
// its goroutine: its idle deadline (or src's ping timeout) is near
// enough that the sweep's granularity would make it late (back on its
// goroutine the pump waits with an exact read deadline; canPark keeps it
// there), or the session is closing and the close handshake's time is
// up (the pump then finds its deadline passed and ends). Until then a
// closing session's legs stay parked: the poller reads their close
// frames (see serve).
func (s *Session) due(src *leg, now time.Time) bool {
	if by := s.closeBy.Load(); by != 0 {
		return now.UnixNano() >= by
	}
	if s.connsClosed.Load() {
		return true
	}
	return s.idle > 0 && s.idleLeft(now) <= parkMargin ||
		s.policy().PingInterval > 0 && s.pingNear(src, now.UnixNano()) ||
		s.expiresNear(src, now.UnixNano())
}

// pingSoon reports whether src is due for a keepalive ping by the next
// sweep: pings go out up to half a sweep early, so that none is more
// than half a sweep late.
func (s *Session) pingSoon(src *leg, now int64) bool {
	at, dead := s.pingDue(src)
	return at != 0 && !dead && now >= at-int64(sweepEvery/2) && s.closeBy.Load() == 0
}
