package proxy

import (
	"sync"
	"syscall"
	"time"
)

// parkAfter is how long a leg may sit idle in its pump goroutine before
// the pump parks it in the shared poller and exits. Busy legs never park,
// so message rates do not pay for it; long-idle sessions cost no stack.
const parkAfter = 200 * time.Millisecond

// sweepEvery is how often the poller looks for parked legs whose session
// needs them back (see due).
const sweepEvery = time.Second

// parkMargin: a leg parks only while its idle deadline is further away
// than this, so the sweep always returns it in time.
const parkMargin = 2 * sweepEvery

// parking reports whether idle legs can be parked on this platform.
const parking = true

// poller waits for many idle legs in one epoll instance and one goroutine.
// A parked leg has no goroutine and no read buffer: it is one map entry.
// The poller goroutine lives as long as the process, like the runtime's
// own network poller.
type poller struct {
	epfd int

	mu     sync.Mutex
	parked map[uint64]parkedPump // guarded by mu
	next   uint64                // guarded by mu
}

type parkedPump struct {
	s        *session
	src, dst *leg
}

var (
	thePoller     *poller // nil until the first park, or if epoll is unavailable
	thePollerOnce sync.Once
)

func getPoller() *poller {
	thePollerOnce.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return // legs keep waiting on their goroutines
		}
		thePoller = &poller{epfd: fd, parked: map[uint64]parkedPump{}}
		go thePoller.loop()
	})
	return thePoller
}

// park registers src for one readiness event and reports whether it did;
// the caller's goroutine then returns, and the pump resumes in a new
// goroutine when src is readable, closed, or due for a deadline.
func (s *session) park(src, dst *leg) bool {
	p := getPoller()
	if p == nil || src.raw == nil || !src.br.idle() {
		return false
	}
	p.mu.Lock()
	id := p.next
	p.next++
	p.parked[id] = parkedPump{s: s, src: src, dst: dst}
	src.parkID = id
	p.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
	var ctlErr error
	// Control pins the descriptor, so it cannot be closed and reused
	// by another connection while it is being registered. After a first
	// event ONESHOT leaves it registered but disarmed: MOD re-arms it.
	err := src.raw.Control(func(fd uintptr) {
		ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if ctlErr == syscall.ENOENT {
			ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil {
		err = ctlErr
	}
	if err != nil {
		// Closed, or epoll refused: keep the pump on its goroutine.
		p.mu.Lock()
		_, mine := p.parked[id]
		delete(p.parked, id)
		p.mu.Unlock()
		return !mine // someone already resumed it: this goroutine must go
	}
	return true
}

// unpark resumes the session's parked pumps at once (its connections are
// closing): each fails on its next read and ends.
func (s *session) unpark() {
	p := thePoller
	if p == nil {
		return
	}
	var wake []parkedPump
	p.mu.Lock()
	for _, l := range []*leg{s.client, s.backend} {
		if l == nil {
			continue
		}
		if pp, ok := p.parked[l.parkID]; ok && pp.s == s && pp.src == l {
			delete(p.parked, l.parkID)
			wake = append(wake, pp)
		}
	}
	p.mu.Unlock()
	for _, pp := range wake {
		go pp.s.pumpLoop(pp.src, pp.dst)
	}
}

// unparkLeg resumes the pump parked on l, if any: its connection was
// closed, which removes it from epoll without an event.
func unparkLeg(l *leg) {
	p := thePoller
	if p == nil {
		return
	}
	p.mu.Lock()
	pp, ok := p.parked[l.parkID]
	if ok && pp.src == l {
		delete(p.parked, l.parkID)
	} else {
		ok = false
	}
	p.mu.Unlock()
	if ok {
		go pp.s.pumpLoop(pp.src, pp.dst)
	}
}

func (p *poller) loop() {
	var events [256]syscall.EpollEvent
	lastSweep := time.Now()
	for {
		n, err := syscall.EpollWait(p.epfd, events[:], int(sweepEvery/time.Millisecond))
		if err != nil && err != syscall.EINTR {
			// Unreachable in practice (EBADF, EFAULT, EINVAL); keep
			// sweeping so parked legs still meet their deadlines.
			time.Sleep(sweepEvery)
		}
		for i := 0; i < n; i++ {
			id := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			p.wake(id)
		}
		if now := time.Now(); now.Sub(lastSweep) >= sweepEvery {
			lastSweep = now
			p.sweep(now)
		}
	}
}

// wake resumes the pump parked under id, if it is still parked.
func (p *poller) wake(id uint64) {
	p.mu.Lock()
	pp, ok := p.parked[id]
	delete(p.parked, id)
	p.mu.Unlock()
	if ok {
		go pp.s.pumpLoop(pp.src, pp.dst)
	}
}

// sweep resumes parked pumps whose session has a deadline due: the idle
// timeout, or the end of a close handshake. The resumed pump finds its
// read deadline passed and acts as if it had waited on its goroutine.
func (p *poller) sweep(now time.Time) {
	var wake []parkedPump
	p.mu.Lock()
	for id, pp := range p.parked {
		if pp.s.due(now) {
			delete(p.parked, id)
			wake = append(wake, pp)
		}
	}
	p.mu.Unlock()
	for _, pp := range wake {
		go pp.s.pumpLoop(pp.src, pp.dst)
	}
}

// due reports whether a parked pump of s must go back to its goroutine:
// the session is closing, or its idle deadline is near enough that the
// sweep's granularity would make it late. Back on its goroutine the pump
// waits with an exact read deadline (canPark keeps it there).
func (s *session) due(now time.Time) bool {
	if s.closeBy.Load() != 0 {
		return true
	}
	return s.idle > 0 && s.idleLeft(now) <= parkMargin
}
