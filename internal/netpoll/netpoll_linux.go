package netpoll

import (
	"crypto/tls"
	"errors"
	"math"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// Supported: the poller and raw socket I/O work on Linux.
const Supported = true

// recv(2) and send(2), not read(2) and write(2): send takes
// MSG_NOSIGNAL, so a write to a peer that has gone fails with EPIPE
// without raising SIGPIPE (the runtime ignores it, but its delivery and
// sigreturn cost a few microseconds per failed write).
const (
	sysRead  = syscall.SYS_RECVFROM
	sysWrite = syscall.SYS_SENDTO
)

// rawIO is recv(2) or send(2) on a non-blocking socket, as a raw system
// call: it cannot block, so it skips the runtime's syscall bookkeeping,
// which on a busy poller made the scheduler hand its P to another thread
// in the middle of a loopback write (a context switch per write).
func rawIO(trap uintptr, fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var flags uintptr
	if trap == sysWrite {
		flags = syscall.MSG_NOSIGNAL
	}
	for {
		n, _, e := syscall.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}

// Recv is one recv(2) on the non-blocking socket fd (see rawIO).
func Recv(fd uintptr, p []byte) (int, error) { return rawIO(sysRead, fd, p) }

// Send is one send(2) on the non-blocking socket fd (see rawIO).
func Send(fd uintptr, p []byte) (int, error) { return rawIO(sysWrite, fd, p) }

// rawTCPConn is a TCP connection whose reads and writes are raw system
// calls on its non-blocking socket, waiting for readiness through the
// runtime's poller (RawConn.Read and Write) only when one would block.
// With GOMAXPROCS=1 a plain net.Conn write of a large buffer (loopback
// delivery runs in the sender) outlives sysmon's 20 µs tick: the P is
// handed to another thread and back, a context switch or two per write.
// Deadlines, close and the other methods are the TCPConn's.
type rawTCPConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex // one Read at a time; guards the fields below
	rp     []byte
	rn     int
	rerr   error
	onRead func(fd uintptr) bool
	onPeek func(fd uintptr) // peekFd, bound once
	peek   [1]byte
	gone   bool // what peekFd found

	wmu sync.Mutex // one Write at a time; guards w
	w   Writer
}

// NewTCPConn wraps c when it is a *net.TCPConn, else returns c.
func NewTCPConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawTCPConn{TCPConn: tc, rc: rc}
	r.onRead = r.readFd
	r.onPeek = r.peekFd
	return r
}

// tcpUserTimeout is TCP_USER_TIMEOUT (linux/tcp.h), which package syscall
// does not name.
const tcpUserTimeout = 0x12

// SetUserTimeout sets TCP_USER_TIMEOUT on c: data that stays
// unacknowledged for d (and keep-alive probes unanswered for d) makes the
// kernel drop the connection, rather than after its ~15 minutes of
// retransmissions (tcp_retries2).
func SetUserTimeout(c *net.TCPConn, d time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	ms := int(min(d.Milliseconds(), math.MaxInt32))
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, ms)
	}); err != nil {
		return err
	}
	return serr
}

// UserTimeout returns the TCP_USER_TIMEOUT of c.
func UserTimeout(c *net.TCPConn) (time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ms int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		ms, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout)
	}); err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, serr
}

// TCPConn returns the *net.TCPConn under c, if there is one. It looks
// through a connection that holds nothing of its own (see Wrapper).
func TCPConn(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *rawTCPConn:
		return c.TCPConn, true
	case Wrapper:
		if u := c.Unwrap(); u != nil {
			return TCPConn(u)
		}
	}
	return nil, false
}

func (c *rawTCPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rp, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.onRead)
	n, rerr := c.rn, c.rerr
	c.rp, c.rerr = nil, nil
	return ReadResult(err, n, rerr)
}

func (c *rawTCPConn) readFd(fd uintptr) bool {
	n, err := Recv(fd, c.rp)
	if err == syscall.EAGAIN {
		return false
	}
	c.rn, c.rerr = n, err
	return true
}

func (c *rawTCPConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.w.Write(c.rc, p)
}

// PeerGone reports, without waiting, whether the peer of an idle
// connection has closed or reset it, or sent bytes nobody asked for
// (either way the connection cannot carry a request): a non-blocking
// recv(2) of one byte with MSG_PEEK. Connections that are not raw TCP
// (under TLS, the TCP one) are reported alive.
func PeerGone(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	rc, ok := c.(*rawTCPConn)
	if !ok {
		return false
	}
	rc.rmu.Lock()
	defer rc.rmu.Unlock()
	rc.gone = false
	if rc.rc.Control(rc.onPeek) != nil {
		return true // closed
	}
	return rc.gone
}

func (c *rawTCPConn) peekFd(fd uintptr) {
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peek[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		// EAGAIN: nothing to read, the connection is open. Anything
		// else (a byte, EOF, a reset) means it is not.
		c.gone = e != syscall.EAGAIN
		return
	}
}

// epollET is EPOLLET as a uint32 (the syscall package's constant is negative).
const epollET = 1 << 31

// Poller waits for many sockets in one epoll instance and calls back on
// one goroutine (Run) with the id each was armed with. The epoll
// descriptor is itself waited for by Go's network poller, so a Poller
// never blocks a thread in epoll_wait. A Poller is never closed: its
// owner keeps it for the life of the process, like the runtime's own
// network poller.
type Poller struct {
	epfd int
	rc   syscall.RawConn // epfd, waited for by the runtime's poller
	file *os.File        // keeps epfd open; its read deadline paces Run's ticks

	events   [128]syscall.EpollEvent // filled by readEvents
	n        int
	onEvents func(fd uintptr) bool // p.readEvents, bound once
}

// New returns a poller.
func New() (*Poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		_ = syscall.Close(fd)
		return nil, err
	}
	// A non-blocking descriptor given to os.NewFile joins the runtime's
	// poller; SetReadDeadline fails if it could not.
	f := os.NewFile(uintptr(fd), "wsgate-epoll")
	rc, err := f.SyscallConn()
	if err == nil {
		err = f.SetReadDeadline(time.Now().Add(time.Second))
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	p := &Poller{epfd: fd, rc: rc, file: f}
	p.onEvents = p.readEvents
	return p, nil
}

// Arm registers the socket of src for readiness (input, or the peer's
// end) carrying id: for one event (then it is disarmed until armed again)
// or, with edge, edge-triggered for every new readiness until Disarm.
// Control pins the descriptor, so it cannot be closed and reused by
// another connection while it is being registered. A registration left
// from an earlier Arm (disarmed by its one event) is modified; one
// removed by Disarm is added again. Either way epoll reports data that is
// already waiting.
func (p *Poller) Arm(src syscall.RawConn, id uint64, edge bool) error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	if edge {
		ev.Events = syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET
	}
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
	var ctlErr error
	err := src.Control(func(fd uintptr) {
		ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if ctlErr == syscall.ENOENT {
			ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil {
		err = ctlErr
	}
	return err
}

// Disarm removes the registration of src (an edge-triggered one would
// otherwise keep reporting while another goroutine reads the socket).
func (p *Poller) Disarm(src syscall.RawConn) {
	_ = src.Control(func(fd uintptr) {
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// Run waits for events forever, on the caller's goroutine: it calls
// onEvent for each (end: the peer closed or the socket failed, possibly
// together with its last data) and onTick about every tick.
func (p *Poller) Run(tick time.Duration, onEvent func(id uint64, end bool, now time.Time), onTick func(now time.Time)) {
	tickAt := time.Now().Add(tick)
	_ = p.file.SetReadDeadline(tickAt)
	for {
		err := p.rc.Read(p.onEvents)
		now := time.Now()
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// Unreachable in practice: the descriptor is never closed.
			// Keep ticking so that the owner's deadlines still pass.
			p.n = 0
			_ = p.file.SetReadDeadline(now.Add(tick))
			time.Sleep(tick)
		}
		for i := range p.n {
			ev := &p.events[i]
			// The peer's FIN (or an error) may come in the same event
			// as its last data; with edge-triggered events it is
			// reported only once.
			end := ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0
			onEvent(uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32, end, now)
		}
		p.n = 0
		if !now.Before(tickAt) {
			onTick(now)
			tickAt = now.Add(tick)
			_ = p.file.SetReadDeadline(tickAt)
		}
	}
}

// readEvents is the RawConn.Read callback: it takes the ready events
// without waiting, or reports that there are none yet.
func (p *Poller) readEvents(fd uintptr) bool {
	for {
		// A raw call: with a zero timeout it cannot block (see rawIO).
		// epoll_pwait with no signal mask is epoll_wait, and exists on
		// every architecture (arm64 has no epoll_wait).
		n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, fd,
			uintptr(unsafe.Pointer(&p.events[0])), uintptr(len(p.events)), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 || n == 0 {
			return false
		}
		p.n = int(n)
		return true
	}
}
