package proxy

import (
	"crypto/tls"
	"net"
	"sync"
	"syscall"
	"unsafe"
)

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
	w   rawWriter
}

// newRawTCPConn wraps c when it is a *net.TCPConn, else returns c.
func newRawTCPConn(c net.Conn) net.Conn {
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

// tcpConn returns the *net.TCPConn under c, if there is one.
func tcpConn(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *rawTCPConn:
		return c.TCPConn, true
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
	return readResult(err, n, rerr)
}

func (c *rawTCPConn) readFd(fd uintptr) bool {
	n, err := rawIO(sysRead, fd, c.rp)
	if err == syscall.EAGAIN {
		return false
	}
	c.rn, c.rerr = n, err
	return true
}

func (c *rawTCPConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.w.write(c.rc, p)
}

// peerGone reports, without waiting, whether the peer of an idle
// connection has closed or reset it, or sent bytes nobody asked for
// (either way the connection cannot carry a request): a non-blocking
// recv(2) of one byte with MSG_PEEK. Connections that are not raw TCP
// (under TLS, the TCP one) are reported alive.
func peerGone(c net.Conn) bool {
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
